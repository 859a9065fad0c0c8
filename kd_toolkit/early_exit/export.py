"""Export the segments of an early-exit network to files that :mod:`kd_toolkit.early_exit.deploy` runs.

:func:`export_segments` writes one program per segment and a ``manifest.json`` (schema in
:mod:`kd_toolkit.early_exit.manifest`) with the thresholds, the confidence rule, the shapes, the
payload handed from one device to the next, and a digest per file. Formats:

* ``"export"`` (default): ``torch.export`` programs, ``segment_{i}.pt2``, loadable with ``torch.export.load``;
* ``"onnx"``: the current (``torch.export``-based) ONNX exporter, ``segment_{i}.onnx``; the opset is recorded;
* ``"torchscript"``: legacy ``torch.jit.trace`` files, ``segment_{i}.pt``; torch has deprecated it (warns once).

Each program computes ``(features, logits)`` of the whole batch (the last one only ``logits``); the
exit decision is made outside the graph from the manifest, so thresholds can be re-tuned without
re-exporting. The batch dimension is dynamic unless ``static_batch`` asks for fixed sizes (one file
per segment per size: ``segment_{i}.b{N}.onnx``). The whole network as one program that decides per
sample inside the graph is :func:`kd_toolkit.early_exit.graph.export_network`.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

import kd_toolkit
from kd_toolkit._checks import check_choice, expected, is_int
from kd_toolkit._io import write_json
from kd_toolkit.early_exit import manifest as schema
from kd_toolkit.early_exit.cost import boundary_payloads
from kd_toolkit.early_exit.deploy import ExportFormat, SegmentChain, quiet_jit
from kd_toolkit.early_exit.network import _placement
from kd_toolkit.early_exit.runtime import eval_mode

__all__ = ["BoundaryDtype", "export_segments"]

BoundaryDtype = Literal["float32", "float16", "bfloat16"]
_BOUNDARY_DTYPES = ("float32", "float16", "bfloat16")
_ONNX_EXTERNAL_DATA_BYTES = 1 << 30  # above this, ONNX weights go to a side file (protobuf's 2 GiB cap)
_TORCHSCRIPT_WARNED = False


class _SegmentGraph(nn.Module):
    """What gets exported: ``x -> (features, logits)`` of the whole batch, or ``logits`` when last.

    ``features`` leave in ``boundary_dtype`` (the payload for the next device); an input that came
    over a boundary is cast back to the network's dtype first.
    """

    def __init__(self, block: nn.Module, exit_head: nn.Module | None, compute: torch.dtype,
                 boundary: torch.dtype, cast_input: bool) -> None:
        super().__init__()
        self.block, self.exit_head = block, exit_head
        self.compute, self.boundary, self.cast_input = compute, boundary, cast_input

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        if self.cast_input:
            x = x.to(self.compute)
        features = self.block(x)  # (B, ...)
        if self.exit_head is None:
            return features  # (B, C): the last block returns logits
        return features.to(self.boundary), self.exit_head(features)  # (B, ...), (B, C)


def export_segments(network: Any, directory: str | os.PathLike, format: ExportFormat = "export", *,
                    static_batch: int | Sequence[int] | None = None, boundary_dtype: BoundaryDtype = "float32",
                    exit_shares: Any = None, validation: Iterable | None = None, overwrite: bool = False) -> Path:
    """Write one program per segment of ``network`` plus ``manifest.json`` into ``directory``.

    Files are written to a temporary directory next to the target and moved into place at the end,
    so a failure never leaves a half-written export. The target may be missing (its parent must
    exist) or empty; a previous export is replaced only with ``overwrite=True``; a directory with
    other files is never replaced.

    Args:
        network: An ``EarlyExitNetwork``.
        directory: Target directory.
        format: ``"export"`` (``torch.export``, ``.pt2``), ``"onnx"`` (needs ``onnx`` and ``onnxscript``)
            or ``"torchscript"`` (legacy, deprecated by torch).
        static_batch: ``None`` (dynamic batch dimension), or a batch size or list of sizes for runtimes
            that need fixed shapes: one file per segment per size; the loader pads or splits batches.
        boundary_dtype: dtype of the features handed to the next segment; ``"float16"`` halves the payload.
        exit_shares: Share of samples leaving at each exit (final included), or a ``CalibrationResult``;
            gives the expected payload per input sample in the manifest. Default: measured on
            ``validation`` when given.
        validation: Batches ``(x, y)`` (a ``DataLoader``) on which the exported chain's accuracy is
            compared with the network's (``manifest["validation"]``); recommended with ``float16``.
        overwrite: Replace a previous export in ``directory``.

    Returns:
        The target directory.

    Example:
        >>> import tempfile
        >>> from kd_toolkit.early_exit import EarlyExitNetwork, load_segments
        >>> net = EarlyExitNetwork(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 3)), (1, 4), 8, [0.9])
        >>> out = export_segments(net, Path(tempfile.mkdtemp()) / "chain")
        >>> sorted(p.name for p in out.iterdir())
        ['manifest.json', 'segment_0.pt2', 'segment_1.pt2']
        >>> load_segments(out).predict(torch.randn(5, 4)).exit_index.shape
        torch.Size([5])
    """
    check_choice("format", format, schema.FORMATS)
    batches = _check_static_batch(static_batch)
    check_choice("boundary_dtype", boundary_dtype, _BOUNDARY_DTYPES)
    if not isinstance(overwrite, bool):
        raise expected("overwrite", "a bool", overwrite)
    shares = _check_shares(exit_shares, network.num_exits)
    if format == "torchscript":
        _warn_torchscript()
    if boundary_dtype != "float32" and validation is None:
        warnings.warn(f"boundary_dtype={boundary_dtype!r} rounds the features handed between devices; pass "
                      "validation=<loader of (x, y)> to measure the accuracy change (manifest['validation']).",
                      UserWarning, stacklevel=2)
    target = Path(directory)
    check_target(target, overwrite)
    staging = make_staging(target)
    try:
        with torch.no_grad(), eval_mode(network):
            entries = _export_all(network, staging, format, batches, getattr(torch, boundary_dtype))
        manifest = _manifest(network, entries, format, batches, boundary_dtype, staging)
        write_json(manifest, staging / schema.MANIFEST)
        if validation is not None:
            manifest["validation"], measured = _validate(network, staging, validation)
            shares = shares or measured
        manifest["payload"] = boundary_payloads(network, boundary_dtype, shares)
        write_json(manifest, staging / schema.MANIFEST)
        move_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _export_all(network: Any, staging: Path, format: str, batches: list[int] | None,
                boundary: torch.dtype) -> list[dict[str, Any]]:
    """Export every segment into ``staging``; return the manifest entries."""
    device, dtype = _placement(network)
    in_shapes = [tuple(network.input_shape[1:]), *map(tuple, network.block_output_shapes[:-1])]
    entries = []
    for index, (segment, in_shape) in enumerate(zip(network.segments(), in_shapes)):
        in_dtype = dtype if index == 0 else boundary
        graph = _SegmentGraph(segment.block, segment.exit_head, dtype, boundary, index > 0).eval()
        programs, files = [], []
        sizes: list[int | None] = [None] if batches is None else list(batches)
        for batch in sizes:
            stem = f"segment_{index}" if batch is None else f"segment_{index}.b{batch}"
            example = _example(in_shape, batch, in_dtype, device)
            written = export_program(graph, example, staging, stem, format, dynamic=batch is None,
                                     what=f"block {index} ({type(segment.block).__name__}) of segment {index}")
            programs.append({"batch": batch, "file": written[0]})
            files += written
        entries.append({
            "index": index, "file": programs[0]["file"], "programs": programs, "files": files,
            "digests": {name: schema.digest(staging / name) for name in files},
            "input_shape": list(in_shape), "input_dtype": str(in_dtype).removeprefix("torch."),
            "feature_shape": None if segment.is_last else list(network.block_output_shapes[index]),
            "boundary": None,  # filled from the payloads below
            "outputs": ["logits"] if segment.is_last else ["features", "logits"],
            "threshold": None if segment.is_last else float(segment.threshold),
            "is_last": bool(segment.is_last),
        })
    return entries


def _manifest(network: Any, entries: list[dict[str, Any]], format: str, batches: list[int] | None,
              boundary_dtype: str, staging: Path) -> dict[str, Any]:
    payload = boundary_payloads(network, boundary_dtype)
    for entry, boundary in zip(entries, payload["boundaries"]):
        entry["boundary"] = boundary
    opset = _onnx_opset(staging / entries[0]["file"]) if format == "onnx" else None
    return {
        "schema": schema.SCHEMA, "format": format, "opset": opset, "static_batch": batches,
        "kd_toolkit_version": kd_toolkit.__version__, "torch_version": torch.__version__,
        "num_segments": len(entries), "num_classes": int(network.num_classes),
        "thresholds": [float(t) for t in network.thresholds], "confidence": network.confidence,
        "input_dtype": str(_placement(network)[1]).removeprefix("torch."), "boundary_dtype": boundary_dtype,
        "payload": payload, "segments": entries, "files": [name for entry in entries for name in entry["files"]],
    }


def _validate(network: Any, staging: Path, validation: Iterable) -> tuple[dict[str, Any], list[float]]:
    """Accuracy of the network and of the exported chain on ``validation``, and the exit shares seen."""
    chain = SegmentChain(staging, device=_placement(network)[0])
    batches = [validation] if isinstance(validation, tuple) and len(validation) == 2 else validation
    correct_eager = correct_chain = total = 0
    counts = torch.zeros(network.num_exits, dtype=torch.long)
    for batch in batches:
        x, y = batch[0], batch[1]
        eager, exported = network.predict(x), chain.predict(x)
        y = torch.as_tensor(y).to(eager.predictions.device)
        correct_eager += int((eager.predictions == y).sum())
        correct_chain += int((exported.predictions.to(y.device) == y).sum())
        counts += torch.bincount(exported.exit_index.cpu(), minlength=network.num_exits)
        total += int(y.numel())
    if total == 0:
        raise expected("validation", "batches (x, y) with at least one sample", validation)
    eager_acc, chain_acc = correct_eager / total, correct_chain / total
    report = {"samples": total, "accuracy_network": eager_acc, "accuracy_exported": chain_acc,
              "accuracy_change": chain_acc - eager_acc}
    return report, (counts.double() / total).tolist()


def export_program(graph: nn.Module, example: Tensor, staging: Path, stem: str, format: str, *, dynamic: bool,
                   what: str, output_names: Sequence[str] | None = None) -> list[str]:
    """Export ``graph`` on ``example`` into ``staging``; return the names of the files it wrote."""
    suffix = schema.SUFFIXES[format]
    path = staging / f"{stem}{suffix}"
    if format == "torchscript":
        with quiet_jit():
            traced = torch.jit.trace(graph, example, check_trace=False)
            if dynamic:
                _check_traced(traced, graph, torch.cat([example, example[:1]]), stem)
            torch.jit.save(traced, str(path))
        return [path.name]
    program = capture(graph, example, dynamic, what)
    if format == "export":
        torch.export.save(program, str(path))
        return [path.name]
    if output_names is None:
        output_names = ["logits"] if getattr(graph, "exit_head", 0) is None else ["features", "logits"]
    size = sum(p.numel() * p.element_size() for p in graph.parameters())
    with contextlib.redirect_stdout(io.StringIO()), _quiet_onnx():  # the exporter prints its progress
        torch.onnx.export(program, (), str(path), input_names=["input"], output_names=list(output_names),
                          external_data=size > _ONNX_EXTERNAL_DATA_BYTES, verbose=False)
    return [path.name] + sorted(p.name for p in staging.glob(f"{stem}{suffix}.*"))


def capture(graph: nn.Module, example: Tensor, dynamic: bool, what: str) -> torch.export.ExportedProgram:
    """``torch.export`` of ``graph`` (dynamic batch dimension unless ``static``), or an error naming ``what``."""
    shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic else None
    try:
        with _quiet_onnx():
            return torch.export.export(graph, (example,), dynamic_shapes=shapes, strict=False)
    except Exception as err:  # torch raises many types here (UserError, GuardOnDataDependentSymNode, ...)
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise RuntimeError(
            f"torch.export cannot capture {what}: {type(err).__name__}: {reason} This usually means Python control "
            "flow that depends on tensor values (`if x.sum() > 0:`) or on the batch size; rewrite it with "
            "torch.where / torch.cond, or export with format='torchscript' (legacy: the trace freezes the branch "
            "taken on the example input)."
        ) from err


@contextlib.contextmanager
def _quiet_onnx() -> Iterator[None]:
    import logging

    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.fx.experimental.symbolic_shapes",
                                                    "torch._export", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module=r"onnxscript.*|torch\.onnx.*")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _onnx_opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return int(next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")))


def _example(in_shape: tuple[int, ...], batch: int | None, dtype: torch.dtype, device: torch.device) -> Tensor:
    generator = torch.Generator().manual_seed(0)  # the user's RNG state stays untouched
    return torch.randn((batch or 2, *in_shape), generator=generator).to(device=device, dtype=dtype)


def _check_traced(traced: torch.jit.ScriptModule, graph: nn.Module, probe: Tensor, stem: str) -> None:
    """A trace bakes in Python control flow and shapes: check it on another batch size."""
    try:
        pairs = zip(_tuple(traced(probe)), _tuple(graph(probe)))
        ok = all(torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5) for a, b in pairs)
    except RuntimeError as err:
        raise RuntimeError(f"The TorchScript trace of {stem} fails on a batch of {probe.shape[0]}: {err}. Make the "
                           "block independent of the batch size (no int(x.shape[0])) or use format='export'.") from err
    if not ok:
        raise RuntimeError(f"The TorchScript trace of {stem} gives different outputs on a batch of {probe.shape[0]}; "
                           "the block probably has data-dependent Python control flow.")


def _tuple(output: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return (output,) if isinstance(output, Tensor) else tuple(output)


def _warn_torchscript() -> None:
    global _TORCHSCRIPT_WARNED
    if not _TORCHSCRIPT_WARNED:
        _TORCHSCRIPT_WARNED = True
        warnings.warn("format='torchscript' is a legacy format: torch has deprecated torch.jit in favour of "
                      "torch.export; use format='export' (.pt2) or 'onnx'.", FutureWarning, stacklevel=3)


def _check_static_batch(static_batch: Any) -> list[int] | None:
    if static_batch is None:
        return None
    values = [static_batch] if is_int(static_batch) else static_batch
    ok = isinstance(values, Sequence) and not isinstance(values, str) and len(values) > 0
    if not ok or not all(is_int(b) and b > 0 for b in values):
        raise expected("static_batch", "None, a positive int or a non-empty list of positive ints", static_batch)
    return sorted({int(b) for b in values})


def _check_shares(exit_shares: Any, num_exits: int) -> list[float] | None:
    if exit_shares is None:
        return None
    values = getattr(exit_shares, "exit_shares", exit_shares)  # a CalibrationResult
    ok = isinstance(values, Sequence) and not isinstance(values, str) and len(values) == num_exits
    if not ok or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in values) \
            or abs(sum(values) - 1.0) > 1e-6:
        raise expected("exit_shares", f"{num_exits} shares in [0, 1] summing to 1 (final exit included) or a "
                       "CalibrationResult", exit_shares)
    return [float(v) for v in values]


def check_target(target: Path, overwrite: bool) -> None:
    """Refuse a target that is a file, has no parent directory, or holds files (unless a previous export + overwrite)."""
    if target.exists() and not target.is_dir():
        raise ValueError(f"Expected `directory` to be a directory path, but got {str(target)!r}, which is a file.")
    if not target.parent.is_dir():
        raise FileNotFoundError(f"Expected `directory` to be in an existing directory, but got {str(target)!r}: "
                                f"{str(target.parent)!r} does not exist; create it first.")
    if not target.is_dir() or not any(target.iterdir()):
        return
    manifest = schema.read_manifest(target)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
        raise ValueError(f"Expected `directory` to be new, empty or a previous export, but got {str(target)!r}, "
                         f"which holds other files (no kd_toolkit {schema.MANIFEST}); choose another directory.")
    extra = sorted({p.name for p in target.iterdir()} - {schema.MANIFEST, *manifest["files"]})
    if extra:
        raise ValueError(f"Expected `directory` to hold only a previous export, but got {str(target)!r}, "
                         f"which also holds {extra}; move them away or choose another directory.")
    if not overwrite:
        raise ValueError(f"Expected `directory` to be new or empty, but got {str(target)!r}, which holds a previous "
                         "export; pass overwrite=True to replace it.")


def make_staging(target: Path) -> Path:
    """A temporary directory beside ``target``; a clear error when the parent is not writable."""
    try:
        return Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    except OSError as err:
        raise PermissionError(f"Expected `directory` to be writable, but cannot write into {str(target.parent)!r}: "
                              f"{err.strerror or err}.") from err


def move_into_place(staging: Path, target: Path) -> None:
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
