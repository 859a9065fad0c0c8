"""The whole early-exit network as ONE exported program that decides per sample inside the graph.

Tracing freezes a data-dependent ``if``, and ``torch.cond`` decides for a whole batch; neither gives
per-sample exits. :func:`export_network` writes a program in which, for a batch, block 0 and exit 0
run on every sample, the samples that leave are found with ``nonzero`` (the runtime's rule,
:func:`kd_toolkit.early_exit.runtime.leaves` on :func:`~kd_toolkit.early_exit.runtime.confidence_scores`),
the others are gathered with ``index_select`` and only they run the next block, and every result is
scattered back to its input position with ``index_copy``. There is no Python control flow on data:
the sizes after each exit are ``torch.export`` unbacked sizes, which may be 0 (a batch where every
sample left). Outputs are ``(predictions, exit_index, logits)``, as :meth:`EarlyExitNetwork.predict`.

Thresholds are baked into the program (re-export after re-tuning); exits whose threshold is 1.0 are
left out of the graph, as ``predict`` skips them. A block that cannot run on an empty batch (e.g.
``x.view(x.size(0), -1)``) is detected at export and run on one extra zero sample that is dropped
afterwards, so the program stays valid when nobody continues.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from kd_toolkit._checks import check_choice, expected
from kd_toolkit.early_exit import runtime
from kd_toolkit.early_exit.export import capture, export_program, make_staging
from kd_toolkit.early_exit.network import _placement
from kd_toolkit.early_exit.runtime import eval_mode

__all__ = ["export_network"]

NetworkFormat = Literal["export", "onnx"]
_SUFFIXES = {"export": ".pt2", "onnx": ".onnx"}


class _EmptySafe(nn.Module):
    """Run ``block`` on its input plus one zero sample and drop that sample: for blocks that fail on 0 rows."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: Tensor) -> Tensor:
        padded = torch.cat([x, x.new_zeros((1, *x.shape[1:]))])  # (R + 1, ...)
        out = self.block(padded)
        return out.narrow(0, 0, x.shape[0])  # (R, ...)


class _NetworkGraph(nn.Module):
    """``x (B, ...) -> (predictions (B,), exit_index (B,), logits (B, C))`` with per-sample exits."""

    def __init__(self, network: Any, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.exits = network.exits
        self.thresholds = list(network.thresholds)
        self.confidence = network.confidence
        self.num_classes = int(network.num_classes)
        self.dtype = _placement(network)[1]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        batch, last = x.shape[0], len(self.blocks) - 1
        position = torch.arange(batch, device=x.device)  # (R,) input position of each undecided sample
        exit_index = torch.full((batch,), last, dtype=torch.long, device=x.device)  # (B,)
        out = torch.zeros((batch, self.num_classes), dtype=self.dtype, device=x.device)  # (B, C)
        h = x
        for index, block in enumerate(self.blocks):
            h = block(h)  # (R, ...)
            if index == last:
                out = out.index_copy(0, position, h.to(out.dtype))  # the final exit takes the rest
                break
            threshold = self.thresholds[index]
            if not runtime.head_runs(threshold):  # closed exit: nobody leaves, the head is not in the graph
                continue
            logits = self.exits[index](h)  # (R, C)
            leave = runtime.leaves(runtime.confidence_scores(logits, self.confidence), threshold)  # (R,) bool
            go = torch.nonzero(leave).squeeze(1)  # (L,) rows that leave here
            stay = torch.nonzero(~leave).squeeze(1)  # (R - L,) rows that go on
            where = position.index_select(0, go)  # (L,) their input positions
            out = out.index_copy(0, where, logits.index_select(0, go).to(out.dtype))
            exit_index = exit_index.index_fill(0, where, index)
            position, h = position.index_select(0, stay), h.index_select(0, stay)
        return out.argmax(dim=-1), exit_index, out


def export_network(network: Any, path: str | os.PathLike, format: NetworkFormat = "onnx", *,
                   overwrite: bool = False) -> Path:
    """Export the whole early-exit network as one program with per-sample exits inside the graph.

    Load it with :func:`kd_toolkit.early_exit.deploy.load_network` (``predict`` gives the same
    ``(predictions, exit_index, logits)`` as :meth:`EarlyExitNetwork.predict`), with
    ``torch.export.load(path).module()(x)`` for ``.pt2``, or with ``onnxruntime.InferenceSession``
    (input ``"input"``, outputs ``"predictions"``, ``"exit_index"``, ``"logits"``) for ``.onnx``.
    The batch dimension is dynamic. The file is written beside ``path`` first and moved into place.

    Args:
        network: An ``EarlyExitNetwork``; its current thresholds are baked in.
        path: Target file, ending with ``.onnx`` (``format="onnx"``) or ``.pt2`` (``format="export"``).
        format: ``"onnx"`` or ``"export"`` (``torch.export``).
        overwrite: Replace an existing file.

    Returns:
        The target path.

    Example:
        >>> import tempfile
        >>> from kd_toolkit.early_exit import EarlyExitNetwork
        >>> from kd_toolkit.early_exit.deploy import load_network
        >>> net = EarlyExitNetwork(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 3)), (1, 4), 8, [0.5])
        >>> out = export_network(net, Path(tempfile.mkdtemp()) / "net.pt2", format="export")
        >>> x = torch.randn(6, 4)
        >>> torch.equal(load_network(out).predict(x).exit_index, net.predict(x).exit_index)
        True
    """
    check_choice("format", format, ("export", "onnx"))
    target = Path(path)
    if target.suffix != _SUFFIXES[format]:
        raise expected("path", f"a file name ending with {_SUFFIXES[format]!r} for format={format!r}", str(path))
    if not isinstance(overwrite, bool):
        raise expected("overwrite", "a bool", overwrite)
    if not target.parent.is_dir():
        raise FileNotFoundError(f"Expected `path` to be in an existing directory, but got {str(path)!r}: "
                                f"{str(target.parent)!r} does not exist; create it first.")
    if target.exists() and (target.is_dir() or not overwrite):
        raise ValueError(f"Expected `path` to be a new file, but got {str(path)!r}, which exists; "
                         "pass overwrite=True to replace it." if target.is_file() else
                         f"Expected `path` to be a file path, but got {str(path)!r}, which is a directory.")
    staging = make_staging(target)
    try:
        with torch.no_grad(), eval_mode(network):
            graph = _NetworkGraph(network, _empty_safe_blocks(network)).eval()
            try:
                written = export_program(graph, _example(network, 2), staging, "network", format, dynamic=True,
                                         what="the one-graph network",
                                         output_names=["predictions", "exit_index", "logits"])
            except RuntimeError as err:
                _name_failing_block(network, err)
                raise
        if len(written) > 1:
            raise ValueError(f"Expected the network to fit in one ONNX file (< 1 GiB of weights), but the exporter "
                             f"wrote {written}; use export_segments instead.")
        os.replace(staging / written[0], target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _example(network: Any, batch: int) -> Tensor:
    device, dtype = _placement(network)
    generator = torch.Generator().manual_seed(0)
    return torch.randn((batch, *network.input_shape[1:]), generator=generator).to(device=device, dtype=dtype)


def _empty_safe_blocks(network: Any) -> list[nn.Module]:
    """The blocks, each wrapped in :class:`_EmptySafe` when it fails on an empty batch (checked eagerly)."""
    blocks, device = [], _placement(network)[0]
    shapes = [tuple(network.input_shape[1:]), *map(tuple, network.block_output_shapes[:-1])]
    for index, (block, shape) in enumerate(zip(network.blocks, shapes)):
        if index == 0:
            blocks.append(block)  # block 0 always sees the whole (non-empty) batch
            continue
        try:
            ok = tuple(block(torch.zeros((0, *shape), dtype=_placement(network)[1], device=device)).shape[1:]) \
                == tuple(network.block_output_shapes[index])
        except (RuntimeError, ValueError, IndexError):
            ok = False
        blocks.append(block if ok else _EmptySafe(block))
    return blocks


def _name_failing_block(network: Any, err: RuntimeError) -> None:
    """Capture each block on its own to say which one ``torch.export`` cannot capture; raise naming it."""
    x = _example(network, 2)
    for index, block in enumerate(network.blocks):
        try:
            capture(block, x, True, f"block {index} ({type(block).__name__}) of the network")
        except RuntimeError as block_err:
            raise block_err from err
        x = block(x)
