"""The facial branch (faces: SISTCM + the two-stream LSTM head): the branch and its model
config (``branch``), its shard row, options and per-item processing (``data``)."""

from branches.facial.branch import FACIAL, FacialBranch, FacialCollate, FacialModelConfig

__all__ = ["FACIAL", "FacialBranch", "FacialCollate", "FacialModelConfig"]
