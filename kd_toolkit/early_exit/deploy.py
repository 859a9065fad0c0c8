"""Run an exported early-exit chain from its files alone: the standalone loader for edge devices.

:func:`load_segments` runs the chain written by :func:`kd_toolkit.early_exit.export.export_segments`
with nothing but torch (TorchScript) or onnxruntime (ONNX, which also uses torch for the
bookkeeping): no model classes, no Lightning, no kd_toolkit. The exit decision is made outside the
graphs from the manifest's thresholds, by the same rule as everywhere else: the sibling file
``runtime.py`` (:mod:`kd_toolkit.early_exit.runtime`).

To run a segment on a device, copy ``deploy.py`` **and** ``runtime.py`` into one folder next to
the export directory. How this file finds its sibling:

* inside a package (``kd_toolkit.early_exit.deploy``, or both files copied into a package of your
  own), ``__package__`` is set and a relative import of ``.runtime`` returns the package's module,
  the very object the rest of kd_toolkit uses (and that tests patch);
* as a plain module (the folder on ``sys.path``, ``python deploy.py``, or loaded from its path with
  ``importlib``), or when the relative import fails, ``runtime.py`` is loaded from this file's
  folder by path with ``importlib.util`` (cached in ``sys.modules`` as ``kd_early_exit_runtime``),
  so neither ``sys.path`` nor the current directory matter, and a missing sibling is named in
  the ``ImportError``.

Type checkers see the package's module (``TYPE_CHECKING``), so calls into it are checked.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import torch
from torch import Tensor

__all__ = ["SegmentChain", "SegmentChainPrediction", "load_segments"]

ExportFormat = Literal["torchscript", "onnx"]
_FORMATS = ("torchscript", "onnx")
_SCHEMA = "kd_toolkit.segments/1"
_MANIFEST = "manifest.json"
_STANDALONE_NAME = "kd_early_exit_runtime"


def _load_sibling(name: str) -> ModuleType:
    """Load ``<name>.py`` from this file's folder by path (this file is not inside a package)."""
    path = Path(__file__).resolve().with_name(f"{name}.py")
    cached = sys.modules.get(_STANDALONE_NAME)
    if cached is not None and getattr(cached, "__file__", None) == str(path):
        return cached
    spec = importlib.util.spec_from_file_location(_STANDALONE_NAME, path)
    if spec is None or spec.loader is None or not path.is_file():
        raise ImportError(f"deploy.py needs its sibling {name}.py in {path.parent}; copy both files.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[_STANDALONE_NAME] = module
    spec.loader.exec_module(module)
    return module


def _import_runtime() -> ModuleType:
    """The package's ``runtime`` module when this file is inside a package, else ``runtime.py`` beside it."""
    if __package__:
        with contextlib.suppress(ImportError):  # e.g. loaded by path under a dotted name without its package
            return importlib.import_module(".runtime", __package__)
    return _load_sibling("runtime")


if TYPE_CHECKING:
    from kd_toolkit.early_exit import runtime
else:
    runtime = _import_runtime()


class SegmentChainPrediction(NamedTuple):
    """Result of :meth:`SegmentChain.predict`, in the order of the input batch."""

    predictions: Tensor  # (B,) long
    exit_index: Tensor  # (B,) long
    logits: Tensor  # (B, C), logits of the exit each sample left at


def load_segments(directory: str | os.PathLike, *, device: str | torch.device = "cpu") -> SegmentChain:
    """Load an export written by ``export_segments``; see :class:`SegmentChain`."""
    return SegmentChain(directory, device=device)


class SegmentChain:
    """The chain of exported segments, run from an export directory without kd_toolkit's models.

    Args:
        directory: An export directory (``manifest.json`` and the segment files).
        device: Where TorchScript segments run; ONNX segments run on onnxruntime's CPU provider
            unless ``device`` is CUDA.

    Attributes:
        manifest: The parsed ``manifest.json``.
        thresholds: Exit thresholds from the manifest; assign new ones (validated) to re-tune.
        confidence: ``"max_prob"`` or ``"entropy"``.
        num_classes: Number of classes.
    """

    def __init__(self, directory: str | os.PathLike, *, device: str | torch.device = "cpu") -> None:
        self.directory = Path(directory)
        manifest = _read_manifest(self.directory)
        if manifest is None:
            raise ValueError(f"Expected `directory` to hold an export with {_MANIFEST}, but got {str(directory)!r}.")
        self.manifest: dict[str, Any] = manifest
        self.device = torch.device(device)
        self.format: ExportFormat = manifest["format"]
        if self.format not in _FORMATS:
            raise ValueError(f"Expected the manifest's `format` to be one of {_FORMATS}, but got {self.format!r}.")
        self.confidence: str = manifest["confidence"]
        self.num_classes: int = int(manifest["num_classes"])
        self._dtype = getattr(torch, manifest.get("input_dtype", "float32"))
        self.thresholds = manifest["thresholds"]
        self._runners = _load_runners([self.directory / entry["file"] for entry in manifest["segments"]],
                                      self.format, self.device)

    def __len__(self) -> int:
        return len(self._runners)

    @property
    def thresholds(self) -> list[float]:
        return list(self._thresholds)

    @thresholds.setter
    def thresholds(self, thresholds: Sequence[float]) -> None:
        self._thresholds = runtime.check_thresholds(thresholds, int(self.manifest["num_segments"]) - 1)

    def segment(self, index: int) -> _ChainSegment:
        """Segment ``index`` as a callable ``x -> (logits, exited, features_for_staying)``.

        ``logits`` is ``(B, C)`` for every sample of the batch, ``exited`` the ``(B,)`` bool mask
        of samples that leave here, ``features_for_staying`` the block output of the others (to
        send to the next device), ``None`` from the last segment.
        """
        if not isinstance(index, int) or not -len(self) <= index < len(self):
            raise ValueError(f"Expected `index` to be an int in [0, {len(self)}), but got {index!r}.")
        return _ChainSegment(self, index % len(self))

    def predict(self, x: Tensor) -> SegmentChainPrediction:
        """Batched early-exit inference: later segments run only on the samples still undecided."""
        steps = [_ChainStep(self, index) for index in range(len(self))]
        with torch.no_grad():
            x = torch.as_tensor(x).to(device=self.device, dtype=self._dtype)
            return SegmentChainPrediction(*runtime.run_chain(steps, x, self.num_classes))

    def _run(self, index: int, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(features, logits)`` of the whole batch; ``features`` is ``logits`` for the last."""
        x = torch.as_tensor(x).to(device=self.device, dtype=self._dtype)
        if self.format == "torchscript":
            outputs = self._runners[index](x)
        else:
            session = self._runners[index]
            arrays = session.run(None, {session.get_inputs()[0].name: x.detach().cpu().numpy()})
            outputs = tuple(torch.from_numpy(a).to(self.device) for a in arrays)
        if isinstance(outputs, Tensor):
            return outputs, outputs
        return outputs[0], outputs[-1]


class _ChainStep:
    """Segment ``index`` of a chain as a runtime chain step ``x -> (logits, exited, features of all)``."""

    def __init__(self, chain: SegmentChain, index: int) -> None:
        self.chain, self.index = chain, index
        self.is_last = index == len(chain) - 1

    def __call__(self, x: Tensor) -> tuple[Tensor | None, Tensor, Tensor]:
        features, logits = self.chain._run(self.index, x)
        threshold = None if self.is_last else self.chain._thresholds[self.index]
        return runtime.decide(features, logits, threshold, self.chain.confidence)


class _ChainSegment(_ChainStep):
    """One loaded segment: ``x -> (logits (B, C), exited (B,) bool, features of the staying or None)``."""

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:  # type: ignore[override]
        with torch.no_grad():
            return runtime.hand_over(super().__call__(x), self.is_last)


def _load_runners(paths: Sequence[Path], format: ExportFormat, device: torch.device) -> list[Any]:
    """One TorchScript module or onnxruntime session per segment file."""
    if format == "torchscript":
        with _quiet_jit():
            return [torch.jit.load(str(path), map_location=device).eval() for path in paths]
    ort = _import_onnxruntime()
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda":
        providers.insert(0, "CUDAExecutionProvider")
    return [ort.InferenceSession(str(path), providers=providers) for path in paths]


def _read_manifest(directory: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((directory / _MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("schema") == _SCHEMA else None


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as err:
        raise ImportError("Running ONNX segments needs onnxruntime: `pip install onnxruntime` "
                          "(or onnxruntime-gpu), or export with format='torchscript'.") from err
    return onnxruntime


@contextlib.contextmanager
def _quiet_jit() -> Iterator[None]:
    """torch.jit is deprecated upstream but still the torch-only way to ship a graph; hide that warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=FutureWarning)
        yield
