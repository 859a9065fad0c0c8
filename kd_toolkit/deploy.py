"""Export the segments of an early-exit network to files, and run the chain from those files alone.

:func:`export_segments` writes one file per segment (TorchScript ``segment_{i}.pt`` or ONNX
``segment_{i}.onnx``) and a ``manifest.json`` with the thresholds, the confidence rule and the
shapes. Each file computes ``(features, logits)`` of the whole batch (the last one only
``logits``); the exit decision is made outside the graph from the manifest, so thresholds can be
re-tuned without re-exporting.

:func:`load_segments` runs the chain from an export directory with nothing but torch (TorchScript)
or onnxruntime (ONNX, which also uses torch for the bookkeeping). This module deliberately imports
nothing from kd_toolkit (no model classes): a device can run its segment with just this file and
the export directory.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import uuid
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

__all__ = ["SegmentChain", "SegmentChainPrediction", "export_segments", "load_segments"]

ExportFormat = Literal["torchscript", "onnx"]
_FORMATS = ("torchscript", "onnx")
_SCHEMA = "kd_toolkit.segments/1"
_MANIFEST = "manifest.json"
_ONNX_EXTERNAL_DATA_BYTES = 1 << 30  # above this, ONNX weights go to a side file (protobuf's 2 GiB cap)


class SegmentChainPrediction(NamedTuple):
    """Result of :meth:`SegmentChain.predict`, in the order of the input batch."""

    predictions: Tensor  # (B,) long
    exit_index: Tensor  # (B,) long
    logits: Tensor  # (B, C), logits of the exit each sample left at


class _SegmentGraph(nn.Module):
    """What gets exported: ``x -> (features, logits)`` of the whole batch, or ``logits`` when last."""

    def __init__(self, block: nn.Module, exit_head: nn.Module | None) -> None:
        super().__init__()
        self.block, self.exit_head = block, exit_head

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        features = self.block(x)  # (B, ...)
        if self.exit_head is None:
            return features  # (B, C): the last block returns logits
        return features, self.exit_head(features)  # (B, ...), (B, C)


def export_segments(network: Any, directory: str | os.PathLike, format: ExportFormat = "torchscript") -> Path:
    """Write one file per segment of ``network`` plus ``manifest.json`` into ``directory``.

    Files are written to a temporary directory next to the target and moved into place at the
    end, so a failure never leaves a half-written export. The target may be missing, empty, or a
    previous export (which is replaced); anything else raises. Exporting an untrained network is
    allowed (useful to test a device chain early); export again after training.

    Args:
        network: An ``EarlyExitNetwork`` (duck-typed: ``segments()``, ``input_shape``,
            ``block_output_shapes``, ``thresholds``, ``confidence``, ``num_classes``).
        directory: Target directory.
        format: ``"torchscript"`` (``torch.jit.trace``) or ``"onnx"`` (``torch.onnx.export``
            with a dynamic batch axis; needs the ``onnx`` and ``onnxscript`` packages).

    Returns:
        The target directory.

    Example:
        >>> import tempfile
        >>> from kd_toolkit.early_exit import EarlyExitNetwork
        >>> net = EarlyExitNetwork(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 3)), (1, 4), 8, [0.9])
        >>> out = export_segments(net, Path(tempfile.mkdtemp()) / "chain")
        >>> sorted(p.name for p in out.iterdir())
        ['manifest.json', 'segment_0.pt', 'segment_1.pt']
        >>> load_segments(out).predict(torch.randn(5, 4)).exit_index.shape
        torch.Size([5])
    """
    if format not in _FORMATS:
        raise ValueError(f"Expected `format` to be one of {_FORMATS}, but got {format!r}.")
    target = Path(directory)
    _check_target(target)
    segments = network.segments()
    in_shapes = [tuple(network.input_shape[1:]), *map(tuple, network.block_output_shapes[:-1])]
    reference = next(network.parameters(), None)
    dtype = torch.get_default_dtype() if reference is None else reference.dtype
    device = torch.device("cpu") if reference is None else reference.device
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        entries = []
        with torch.no_grad(), _eval_mode(network):
            for index, (segment, in_shape) in enumerate(zip(segments, in_shapes)):
                graph = _SegmentGraph(segment.block, segment.exit_head).eval()
                files = _export_graph(graph, in_shape, dtype, device, staging, f"segment_{index}", format)
                entries.append({
                    "index": index,
                    "file": files[0],
                    "files": files,
                    "input_shape": list(in_shape),
                    "feature_shape": None if segment.is_last else list(network.block_output_shapes[index]),
                    "outputs": ["logits"] if segment.is_last else ["features", "logits"],
                    "threshold": None if segment.is_last else float(segment.threshold),
                    "is_last": bool(segment.is_last),
                })
        manifest = {
            "schema": _SCHEMA,
            "format": format,
            "kd_toolkit_version": getattr(sys.modules.get("kd_toolkit"), "__version__", None),
            "torch_version": torch.__version__,
            "num_segments": len(entries),
            "num_classes": int(network.num_classes),
            "thresholds": [float(t) for t in network.thresholds],
            "confidence": network.confidence,
            "input_dtype": str(dtype).removeprefix("torch."),
            "segments": entries,
            "files": [name for entry in entries for name in entry["files"]],
        }
        (staging / _MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _move_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def load_segments(directory: str | os.PathLike, *, device: str | torch.device = "cpu") -> SegmentChain:
    """Load an export written by :func:`export_segments`; see :class:`SegmentChain`."""
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
        self.manifest = _read_manifest(self.directory)
        if self.manifest is None:
            raise ValueError(f"Expected `directory` to hold an export with {_MANIFEST}, but got {str(directory)!r}.")
        self.device = torch.device(device)
        self.format: ExportFormat = self.manifest["format"]
        if self.format not in _FORMATS:
            raise ValueError(f"Expected the manifest's `format` to be one of {_FORMATS}, but got {self.format!r}.")
        self.confidence: str = self.manifest["confidence"]
        self.num_classes: int = int(self.manifest["num_classes"])
        self._dtype = getattr(torch, self.manifest.get("input_dtype", "float32"))
        self.thresholds = self.manifest["thresholds"]
        paths = [self.directory / entry["file"] for entry in self.manifest["segments"]]
        if self.format == "torchscript":
            with _quiet_jit():
                self._runners = [torch.jit.load(str(path), map_location=self.device).eval() for path in paths]
        else:
            ort = _import_onnxruntime()
            providers = ["CPUExecutionProvider"]
            if self.device.type == "cuda":
                providers.insert(0, "CUDAExecutionProvider")
            self._runners = [ort.InferenceSession(str(path), providers=providers) for path in paths]

    def __len__(self) -> int:
        return len(self._runners)

    @property
    def thresholds(self) -> list[float]:
        return list(self._thresholds)

    @thresholds.setter
    def thresholds(self, thresholds: Sequence[float]) -> None:
        count = int(self.manifest["num_segments"]) - 1
        ok = isinstance(thresholds, Sequence) and len(thresholds) == count and all(
            isinstance(t, (int, float)) and not isinstance(t, bool) and 0.0 < t <= 1.0 for t in thresholds
        )
        if not ok:
            raise ValueError(f"Expected `thresholds` to be {count} number(s) in (0, 1], but got {thresholds!r}.")
        self._thresholds = [float(t) for t in thresholds]

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
        batch = x.shape[0]
        exit_index = torch.full((batch,), len(self) - 1, dtype=torch.long, device=self.device)  # (B,)
        remaining = torch.arange(batch, device=self.device)  # (R,) original positions still undecided
        out = None
        with torch.no_grad():
            for index in range(len(self)):
                if remaining.numel() == 0:
                    break
                features, logits = self._run(index, x)
                exited = self._exited(index, logits)  # (R,)
                if out is None:
                    out = logits.new_zeros((batch, logits.shape[-1]))  # (B, C)
                out[remaining[exited]] = logits[exited].to(out.dtype)
                exit_index[remaining[exited]] = index
                remaining, x = remaining[~exited], features[~exited]
        if out is None:  # empty batch
            out = torch.zeros((batch, self.num_classes), device=self.device)
        return SegmentChainPrediction(out.argmax(dim=-1), exit_index, out)

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
        if len(outputs) == 1:
            return outputs[0], outputs[0]
        return outputs[0], outputs[1]

    def _exited(self, index: int, logits: Tensor) -> Tensor:
        if index == len(self) - 1:
            return torch.ones(logits.shape[0], dtype=torch.bool, device=logits.device)
        return _confidence_scores(logits, self.confidence) > self._thresholds[index]


class _ChainSegment:
    """One loaded segment: ``x -> (logits (B, C), exited (B,) bool, features of the staying or None)``."""

    def __init__(self, chain: SegmentChain, index: int) -> None:
        self.chain, self.index = chain, index
        self.is_last = index == len(chain) - 1

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        with torch.no_grad():
            features, logits = self.chain._run(self.index, x)
            exited = self.chain._exited(self.index, logits)
        return logits, exited, None if self.is_last else features[~exited]


def _confidence_scores(logits: Tensor, confidence: str) -> Tensor:
    """Same rule as ``kd_toolkit.early_exit.confidence_scores`` (kept here so this file stands alone)."""
    log_p = torch.log_softmax(logits.float(), dim=-1)  # (B, C)
    if confidence == "max_prob":
        return log_p.max(dim=-1).values.exp().clamp(0.0, 1.0)  # (B,)
    if confidence != "entropy":
        raise ValueError(f"Expected `confidence` to be one of ('max_prob', 'entropy'), but got {confidence!r}.")
    num_classes = logits.shape[-1]
    if num_classes < 2:
        return torch.ones(logits.shape[:-1], device=logits.device)
    entropy = -(log_p.exp() * log_p).sum(dim=-1)  # (B,)
    return (1.0 - entropy / math.log(num_classes)).clamp(0.0, 1.0)


def _export_graph(graph: nn.Module, in_shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
                  staging: Path, stem: str, format: ExportFormat) -> list[str]:
    """Export one segment graph into ``staging``; return the names of the files it wrote."""
    generator = torch.Generator().manual_seed(0)  # the user's RNG state stays untouched
    example = torch.randn((2, *in_shape), generator=generator).to(device=device, dtype=dtype)  # (2, ...)
    if format == "torchscript":
        probe = torch.randn((3, *in_shape), generator=generator).to(device=device, dtype=dtype)  # (3, ...)
        with _quiet_jit():
            traced = torch.jit.trace(graph, example, check_trace=False)
            _check_traced(traced, graph, probe, stem)
            torch.jit.save(traced, str(staging / f"{stem}.pt"))
    else:
        size = sum(p.numel() * p.element_size() for p in graph.parameters())
        names = ["logits"] if graph.exit_head is None else ["features", "logits"]
        torch.onnx.export(
            graph, (example,), str(staging / f"{stem}.onnx"), input_names=["input"], output_names=names,
            dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), external_data=size > _ONNX_EXTERNAL_DATA_BYTES,
            verbose=False,
        )
    suffix = ".pt" if format == "torchscript" else ".onnx"
    return [f"{stem}{suffix}"] + sorted(p.name for p in staging.glob(f"{stem}{suffix}.*"))


def _check_traced(traced: torch.jit.ScriptModule, graph: nn.Module, probe: Tensor, stem: str) -> None:
    """A trace bakes in Python control flow and shapes: check it on another batch size."""
    try:
        pairs = zip(_tuple(traced(probe)), _tuple(graph(probe)))
        ok = all(torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in pairs)
    except RuntimeError as err:
        raise RuntimeError(f"The TorchScript trace of {stem} fails on a batch of {probe.shape[0]}: {err}. Make the "
                           "block independent of the batch size (no int(x.shape[0])) or use format='onnx'.") from err
    if not ok:
        raise RuntimeError(f"The TorchScript trace of {stem} gives different outputs on a batch of {probe.shape[0]}; "
                           "the block probably has data-dependent Python control flow.")


def _tuple(output: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return (output,) if isinstance(output, Tensor) else tuple(output)


def _check_target(target: Path) -> None:
    if target.exists() and not target.is_dir():
        raise ValueError(f"Expected `directory` to be a directory path, but got {str(target)!r}, which is a file.")
    if target.is_dir() and any(target.iterdir()):
        manifest = _read_manifest(target)
        if manifest is None:
            raise ValueError(f"Expected `directory` to be new, empty or a previous export, but got {str(target)!r}, "
                             f"which holds other files (no kd_toolkit {_MANIFEST}); choose another directory.")
        extra = sorted({p.name for p in target.iterdir()} - {_MANIFEST, *manifest.get("files", [])})
        if extra:
            raise ValueError(f"Expected `directory` to hold only a previous export, but got {str(target)!r}, "
                             f"which also holds {extra}; move them away or choose another directory.")


def _read_manifest(directory: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((directory / _MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("schema") == _SCHEMA else None


def _move_into_place(staging: Path, target: Path) -> None:
    """Swap ``staging`` in for ``target``; an existing target is set aside first and restored on failure."""
    backup = None
    if target.exists():
        backup = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(target, backup)
    try:
        os.replace(staging, target)
    except BaseException:
        if backup is not None:
            os.replace(backup, target)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


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


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode, restoring every submodule's own training flag afterwards."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag
