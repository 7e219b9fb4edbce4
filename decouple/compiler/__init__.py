"""The compiler: graph views, split points, the partition into stages, candidate cuts, the cut chooser and the program IR.

``graph_view.py`` (networkx view of an fx graph, module calls), ``splits.py`` (split names to cuts),
``partition.py`` (stages and the values crossing each cut), ``candidates.py`` (where a single
tensor crosses, with costs), ``cuts.py`` (the one min-max cut chooser), ``program.py`` (what
passes transform and codegen reads).
"""

from .candidates import Candidate, candidate_splits, candidates_for_stages
from .cuts import Balance, Segment, choose_cuts, stage_costs
from .partition import Partition, StagePlan, partition
from .program import InferenceTail, Program, StageSpec
from .splits import SplitPoint, resolve_splits

__all__ = [
    "Candidate",
    "candidate_splits",
    "candidates_for_stages",
    "Segment",
    "Balance",
    "choose_cuts",
    "stage_costs",
    "Partition",
    "StagePlan",
    "partition",
    "InferenceTail",
    "Program",
    "StageSpec",
    "SplitPoint",
    "resolve_splits",
]
