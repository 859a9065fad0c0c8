"""Run an exported early-exit network from its files alone: the standalone loader for edge devices.

:func:`load_segments` runs the chain written by :func:`kd_toolkit.early_exit.export.export_segments`
with nothing but torch (``torch.export`` programs and TorchScript) or onnxruntime (ONNX, which also
uses torch for the bookkeeping): no model classes, no Lightning, no kd_toolkit. The exit decision is
made outside the graphs from the manifest's thresholds, by the same rule as everywhere else: the
sibling file ``runtime.py`` (:mod:`kd_toolkit.early_exit.runtime`). The manifest is checked by the
sibling ``manifest.py`` (schema, file names inside the directory, digests) before anything is loaded.
:func:`load_network` runs the one-graph program of :func:`kd_toolkit.early_exit.export_network`.

To run a segment on a device, copy ``deploy.py``, ``runtime.py`` **and** ``manifest.py`` into one
folder next to the export directory. How this file finds its siblings:

* inside a package (``kd_toolkit.early_exit.deploy``, or the files copied into a package of your
  own), ``__package__`` is set and a relative import returns the package's module, the very object
  the rest of kd_toolkit uses (and that tests patch);
* as a plain module (the folder on ``sys.path``, ``python deploy.py``, or loaded from its path with
  ``importlib``), or when the relative import fails, each sibling is loaded from this file's folder
  by path with ``importlib.util`` (cached in ``sys.modules`` as ``kd_early_exit_<name>``), so
  neither ``sys.path`` nor the current directory matter, and a missing sibling is named in the
  ``ImportError``.

Type checkers see the package's modules (``TYPE_CHECKING``), so calls into them are checked.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import torch
from torch import Tensor

__all__ = ["NetworkProgram", "SegmentChain", "SegmentChainPrediction", "load_network", "load_segments"]

ExportFormat = Literal["export", "onnx", "torchscript"]


def _load_sibling(name: str) -> ModuleType:
    """Load ``<name>.py`` from this file's folder by path (this file is not inside a package)."""
    path = Path(__file__).resolve().with_name(f"{name}.py")
    cache_name = f"kd_early_exit_{name}"
    cached = sys.modules.get(cache_name)
    if cached is not None and getattr(cached, "__file__", None) == str(path):
        return cached
    spec = importlib.util.spec_from_file_location(cache_name, path)
    if spec is None or spec.loader is None or not path.is_file():
        raise ImportError(f"deploy.py needs its sibling {name}.py in {path.parent}; copy deploy.py, runtime.py "
                          "and manifest.py together.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[cache_name] = module
    spec.loader.exec_module(module)
    return module


def _import_sibling(name: str) -> ModuleType:
    """The package's module when this file is inside a package, else ``<name>.py`` beside it."""
    if __package__:
        with contextlib.suppress(ImportError):  # e.g. loaded by path under a dotted name without its package
            return importlib.import_module(f".{name}", __package__)
    return _load_sibling(name)


if TYPE_CHECKING:
    from kd_toolkit.early_exit import manifest as schema
    from kd_toolkit.early_exit import runtime
else:
    runtime = _import_sibling("runtime")
    schema = _import_sibling("manifest")

_FORMATS = schema.FORMATS
_MANIFEST = schema.MANIFEST


class SegmentChainPrediction(NamedTuple):
    """Result of :meth:`SegmentChain.predict` and :meth:`NetworkProgram.predict`, in input order."""

    predictions: Tensor  # (B,) long
    exit_index: Tensor  # (B,) long
    logits: Tensor  # (B, C), logits of the exit each sample left at


def load_segments(directory: str | os.PathLike, *, device: str | torch.device = "cpu") -> SegmentChain:
    """Load an export written by ``export_segments``; see :class:`SegmentChain`."""
    return SegmentChain(directory, device=device)


class SegmentChain:
    """The chain of exported segments, run from an export directory without kd_toolkit's models.

    Loading validates ``manifest.json`` against its schema (an error names the key), checks that
    every file name stays inside ``directory`` and that every file matches its recorded size and
    SHA-256 digest (an error names the file), and only then loads the programs.

    Args:
        directory: An export directory (``manifest.json`` and the segment files).
        device: Where ``torch.export`` and TorchScript segments run; ONNX segments run on
            onnxruntime's CPU provider unless ``device`` is CUDA.

    Attributes:
        manifest: The parsed ``manifest.json``.
        thresholds: Exit thresholds from the manifest; assign new ones (validated) to re-tune.
        confidence: ``"max_prob"`` or ``"entropy"``.
        num_classes: Number of classes.
    """

    def __init__(self, directory: str | os.PathLike, *, device: str | torch.device = "cpu") -> None:
        self.directory = Path(directory)
        manifest = schema.read_manifest(self.directory)
        if manifest is None:
            raise ValueError(f"Expected `directory` to hold an export with {_MANIFEST}, but got {str(directory)!r}.")
        self.manifest: dict[str, Any] = schema.validate_manifest(manifest, self.directory)
        schema.verify_files(self.manifest, self.directory)
        self.device = torch.device(device)
        self.format: ExportFormat = manifest["format"]
        self.confidence: str = manifest["confidence"]
        self.num_classes: int = int(manifest["num_classes"])
        self.thresholds = manifest["thresholds"]
        self._entries: list[dict[str, Any]] = manifest["segments"]
        self._runners = [
            {program["batch"]: _load_runner(self.directory / program["file"], self.format, self.device)
             for program in entry["programs"]}
            for entry in self._entries
        ]

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
        send to the next device, in the manifest's ``boundary_dtype``), ``None`` from the last segment.
        """
        if not isinstance(index, int) or not -len(self) <= index < len(self):
            raise ValueError(f"Expected `index` to be an int in [0, {len(self)}), but got {index!r}.")
        return _ChainSegment(self, index % len(self))

    def predict(self, x: Tensor) -> SegmentChainPrediction:
        """Batched early-exit inference: later segments run only on the samples still undecided."""
        steps = [_ChainStep(self, index) for index in range(len(self))]
        with torch.no_grad():
            x = self._check_input(0, x)
            return SegmentChainPrediction(*runtime.run_chain(steps, x, self.num_classes))

    def _check_input(self, index: int, x: Any) -> Tensor:
        """``x`` as a tensor on the device in the segment's input dtype, or ``ValueError`` on a wrong shape."""
        entry = self._entries[index]
        x = torch.as_tensor(x)
        want = tuple(entry["input_shape"])
        if x.dim() != len(want) + 1 or tuple(x.shape[1:]) != want:
            hint = "; it looks unbatched: add the batch dimension with x.unsqueeze(0)" if tuple(x.shape) == want else ""
            raise ValueError(f"Expected the input of segment {index} to have shape (B, {', '.join(map(str, want))}) "
                             f"(manifest: segments[{index}].input_shape = {list(want)}, batch first), but got "
                             f"{tuple(x.shape)}{hint}.")
        return x.to(device=self.device, dtype=getattr(torch, entry["input_dtype"]))

    def _run(self, index: int, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(features, logits)`` of the whole batch; ``features`` is ``logits`` for the last."""
        x = self._check_input(index, x)
        entry, runners = self._entries[index], self._runners[index]
        if x.shape[0] == 0:  # nobody to run: empty results of the right shapes, no graph call
            logits = torch.zeros((0, self.num_classes), device=self.device)
            if entry["is_last"]:
                return logits, logits
            dtype = getattr(torch, self.manifest["boundary_dtype"])
            return torch.zeros((0, *entry["feature_shape"]), dtype=dtype, device=self.device), logits
        if None in runners:
            outputs = self._call(runners[None], x)
        else:  # static batch sizes: pad up to the smallest one that fits, or split by the largest
            outputs = _run_static(lambda b, chunk: self._call(runners[b], chunk), sorted(runners), x)
        return outputs[0], outputs[-1]

    def _call(self, runner: Any, x: Tensor) -> tuple[Tensor, ...]:
        if self.format != "onnx":
            result = runner(x)
            return (result,) if isinstance(result, Tensor) else tuple(result)
        arrays = runner.run(None, {runner.get_inputs()[0].name: x.detach().cpu().numpy()})
        return tuple(torch.from_numpy(a).to(self.device) for a in arrays)


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


def _run_static(call: Any, sizes: list[int], x: Tensor) -> tuple[Tensor, ...]:
    """Run fixed-batch programs on ``x`` of any batch size: zero-pad to a size, split by the largest."""
    n, largest = x.shape[0], sizes[-1]
    if n > largest:
        parts = [_run_static(call, sizes, chunk) for chunk in torch.split(x, largest)]
        return tuple(torch.cat(group) for group in zip(*parts))
    size = next(b for b in sizes if b >= n)
    padded = x if n == size else torch.cat([x, x.new_zeros((size - n, *x.shape[1:]))])
    return tuple(out[:n] for out in call(size, padded))


def _load_runner(path: Path, format: str, device: torch.device) -> Any:
    """One ``torch.export`` module, TorchScript module or onnxruntime session."""
    if format == "export":
        return torch.export.load(str(path)).module().to(device)
    if format == "torchscript":
        with quiet_jit():
            return torch.jit.load(str(path), map_location=device).eval()
    ort = _import_onnxruntime()
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda":
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(str(path), providers=providers)


def load_network(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> NetworkProgram:
    """Load the one-graph program written by ``export_network`` (``.pt2`` or ``.onnx``); see :class:`NetworkProgram`."""
    return NetworkProgram(path, device=device)


class NetworkProgram:
    """The whole early-exit network as one program: ``predict(x)`` decides per sample inside the graph.

    Args:
        path: A ``.pt2`` file (``torch.export``) or an ``.onnx`` file written by ``export_network``.
        device: Where a ``.pt2`` program runs; ONNX runs on onnxruntime's CPU provider unless CUDA.
    """

    def __init__(self, path: str | os.PathLike, *, device: str | torch.device = "cpu") -> None:
        self.path, self.device = Path(path), torch.device(device)
        suffix = self.path.suffix
        if suffix not in (".pt2", ".onnx"):
            raise ValueError(f"Expected `path` to end with .pt2 or .onnx, but got {str(path)!r}.")
        if not self.path.is_file():
            raise FileNotFoundError(f"Expected `path` to be a file written by export_network, but {str(path)!r} "
                                    "does not exist.")
        self.format: ExportFormat = "export" if suffix == ".pt2" else "onnx"
        self._runner = _load_runner(self.path, self.format, self.device)
        if self.format == "onnx":
            dims = self._runner.get_inputs()[0].shape[1:]
            self.input_shape: tuple[int, ...] | None = tuple(dims) if all(isinstance(d, int) for d in dims) else None
        else:
            self.input_shape = None

    def predict(self, x: Tensor) -> SegmentChainPrediction:
        """``(predictions (B,), exit_index (B,), logits (B, C))``, as ``EarlyExitNetwork.predict`` gives."""
        x = torch.as_tensor(x)
        if self.input_shape is not None and tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"Expected `x` to have shape (B, {', '.join(map(str, self.input_shape))}), but got "
                             f"{tuple(x.shape)}.")
        with torch.no_grad():
            if self.format == "export":
                outputs = tuple(self._runner(x.to(self.device)))
            else:
                arrays = self._runner.run(None, {self._runner.get_inputs()[0].name: x.detach().cpu().numpy()})
                outputs = tuple(torch.from_numpy(a).to(self.device) for a in arrays)
        return SegmentChainPrediction(*outputs)


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as err:
        raise ImportError("Running ONNX segments needs onnxruntime: `pip install onnxruntime` "
                          "(or onnxruntime-gpu), or export with format='export'.") from err
    return onnxruntime


@contextlib.contextmanager
def quiet_jit() -> Iterator[None]:
    """Hide torch's own TorchScript deprecation warning (kd_toolkit warns once itself, at export)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r".*TorchScript.*deprecated", category=FutureWarning)
        yield

