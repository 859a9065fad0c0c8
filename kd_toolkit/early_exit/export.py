"""Export the segments of an early-exit network to files that :mod:`kd_toolkit.early_exit.deploy` runs.

:func:`export_segments` writes one file per segment (TorchScript ``segment_{i}.pt`` or ONNX
``segment_{i}.onnx``) and a ``manifest.json`` with the thresholds, the confidence rule and the
shapes. Each file computes ``(features, logits)`` of the whole batch (the last one only
``logits``); the exit decision is made outside the graph from the manifest, so thresholds can be
re-tuned without re-exporting.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import kd_toolkit
from kd_toolkit._io import write_json
from kd_toolkit.early_exit.deploy import _FORMATS, _MANIFEST, _SCHEMA, ExportFormat, _quiet_jit, _read_manifest
from kd_toolkit.early_exit.network import _placement
from kd_toolkit.early_exit.runtime import eval_mode

__all__ = ["export_segments"]

_ONNX_EXTERNAL_DATA_BYTES = 1 << 30  # above this, ONNX weights go to a side file (protobuf's 2 GiB cap)


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
        >>> from kd_toolkit.early_exit import EarlyExitNetwork, load_segments
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
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        with torch.no_grad(), eval_mode(network):
            entries = _export_all(network, staging, format)
        write_json(_manifest(network, entries, format), staging / _MANIFEST)
        _move_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _export_all(network: Any, staging: Path, format: ExportFormat) -> list[dict[str, Any]]:
    """Export every segment into ``staging``; return the manifest entries."""
    device, dtype = _placement(network)
    in_shapes = [tuple(network.input_shape[1:]), *map(tuple, network.block_output_shapes[:-1])]
    entries = []
    for index, (segment, in_shape) in enumerate(zip(network.segments(), in_shapes)):
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
    return entries


def _manifest(network: Any, entries: list[dict[str, Any]], format: ExportFormat) -> dict[str, Any]:
    return {
        "schema": _SCHEMA,
        "format": format,
        "kd_toolkit_version": kd_toolkit.__version__,
        "torch_version": torch.__version__,
        "num_segments": len(entries),
        "num_classes": int(network.num_classes),
        "thresholds": [float(t) for t in network.thresholds],
        "confidence": network.confidence,
        "input_dtype": str(_placement(network)[1]).removeprefix("torch."),
        "segments": entries,
        "files": [name for entry in entries for name in entry["files"]],
    }


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
