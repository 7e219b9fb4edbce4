"""The ranks as a 2-D mesh of pipelines (one per replica) by stages: who trains what, and who talks to whom.

Rank layout (``init_device_mesh(device, (R, S), mesh_dim_names=("replica", "stage"))``): rank
``r * S + s`` trains stage ``s`` of replica ``r``, so the ``S`` stages of one pipeline hold
consecutive ranks. Why this order: under torchrun ranks fill a node before the next, so a
pipeline's neighbours share a node whenever ``S`` divides the GPUs per node, and its forward
messages, sent for every batch (activations of ``batch / R`` samples at every cut), travel on
the node's fast links; the replica all-reduce (each stage's gradients, once per optimizer step,
like DDP) is what crosses nodes, and it is the traffic data-parallel training already tolerates.
For 2 nodes x 8 GPUs with 4 stages x 4 replicas: node 0 holds replicas 0 and 1, node 1 replicas
2 and 3; every pipeline stays inside a node.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist

from ...errors import ConfigError

__all__ = ["StageMesh", "build_mesh", "check_world"]


@dataclass(frozen=True)
class StageMesh:
    """This rank's place in the mesh and the process groups it talks through.

    ``pipeline``: the ranks of this replica's stages (ranks within it are stage indices);
    ``replicas``: the ranks training this stage (ranks within it are replica indices).
    """

    stages: int
    replicas: int
    rank: int
    pipeline: dist.ProcessGroup
    replica_group: dist.ProcessGroup

    @property
    def stage(self) -> int:
        return self.rank % self.stages

    @property
    def replica(self) -> int:
        return self.rank // self.stages

    def global_rank(self, replica: int, stage: int) -> int:
        """The rank that trains ``stage`` of ``replica``."""
        return replica * self.stages + stage


def check_world(world_size: int, stages: int, replicas: int | None) -> int:
    """The number of replicas: ``replicas``, or the world size over the stage count; a mismatch names the numbers."""
    if replicas is not None and (isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1):
        raise ConfigError(f"replicas must be a positive int (data-parallel copies of every stage), got {replicas!r}")
    if world_size % stages != 0 or (replicas is not None and world_size != stages * replicas):
        want = f"{stages} stages x {replicas} replicas = {stages * replicas}" if replicas else f"a multiple of {stages}"
        ranks = stages * (replicas or 1)
        other = (
            f", or convert into a number of stages that divides {world_size} (e.g. splits={world_size})"
            if world_size > 1
            else ""
        )
        raise ConfigError(
            f"the model has {stages} stage{'s' if stages != 1 else ''} but the process group has {world_size} rank{'s' if world_size != 1 else ''}; "
            f"the world size must be {want}, one rank per stage of every replica: run torchrun --nproc-per-node "
            f"{ranks} or launch(fn, {ranks}){other}"
        )
    return world_size // stages


def build_mesh(stages: int, replicas: int, device_type: str) -> StageMesh:
    """The (replica, stage) device mesh over the default process group (a collective: every rank calls it)."""
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(device_type, (replicas, stages), mesh_dim_names=("replica", "stage"))
    return StageMesh(stages, replicas, dist.get_rank(), mesh.get_group("stage"), mesh.get_group("replica"))
