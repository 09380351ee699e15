"""The gesture branch (bodies: joint trajectories as images + ACCM): the branch and its model
config (``branch``), its shard row, options and per-item processing (``data``)."""

from branches.gesture.branch import GESTURE, GestureBranch, GestureCollate, GestureModelConfig

__all__ = ["GESTURE", "GestureBranch", "GestureCollate", "GestureModelConfig"]
