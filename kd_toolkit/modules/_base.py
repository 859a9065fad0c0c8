"""Deprecated: moved to :mod:`kd_toolkit.core` (``KDBaseModule``, ``logits_of``, ``split_batch``) and
:mod:`kd_toolkit._io` (``load_weights``)."""

import warnings

from kd_toolkit._io import load_weights
from kd_toolkit.core.batch import logits_of, split_batch
from kd_toolkit.core.module import KDBaseModule as _KDBaseModule

warnings.warn("kd_toolkit.modules._base is deprecated; import from kd_toolkit.core instead.", DeprecationWarning,
              stacklevel=2)
__all__ = ["_KDBaseModule", "load_weights", "logits_of", "split_batch"]
