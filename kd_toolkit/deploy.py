"""Deprecated: moved to :mod:`kd_toolkit.early_exit.export` (``export_segments``) and
:mod:`kd_toolkit.early_exit.deploy` (``load_segments``, ``SegmentChain``; copy it with its sibling ``runtime.py``)."""

import warnings

from kd_toolkit.early_exit.deploy import SegmentChain, SegmentChainPrediction, load_segments
from kd_toolkit.early_exit.export import export_segments

warnings.warn("kd_toolkit.deploy is deprecated; import from kd_toolkit.early_exit.deploy (load_segments, "
              "SegmentChain) and kd_toolkit.early_exit.export (export_segments) instead.", DeprecationWarning,
              stacklevel=2)
__all__ = ["SegmentChain", "SegmentChainPrediction", "export_segments", "load_segments"]
