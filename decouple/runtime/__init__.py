"""Runtimes that train the stages of a decoupled model: sequential, threaded pipeline, distributed."""

from .sequential import forward_stages, move, train_step

__all__ = ["forward_stages", "move", "train_step"]
