"""What early exit costs: multiply-accumulates per exit (counted by torch), measured latency, and the bytes
handed from one device to the next (:func:`boundary_payloads`); :func:`cost_report` prints them side by side.

MACs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions;
MACs = FLOPs / 2) and turned into per-exit costs by the runtime's one cost rule
(:func:`kd_toolkit.early_exit.runtime.exit_costs`), which knows that the heads of closed exits
(threshold 1.0) are skipped.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from kd_toolkit._checks import check_int, is_int
from kd_toolkit.early_exit import runtime
from kd_toolkit.early_exit.network import EarlyExitNetwork, _check_input_shape, _placement, _zeros_like_params
from kd_toolkit.early_exit.runtime import eval_mode

__all__ = ["boundary_payloads", "cost_report", "exit_macs", "mac_parts", "measure_segment_latency"]


def exit_macs(network: EarlyExitNetwork, input_shape: Sequence[int] | None = None) -> list[int]:
    """Cumulative multiply-accumulates for one sample to leave at each exit, final included.

    Entry ``i`` counts blocks ``0..i``, exit ``i``'s head, and the heads of the earlier exits the
    sample went through, as :meth:`EarlyExitNetwork.predict` computes them (it skips the heads
    of exits whose threshold is 1.0, so those are not counted). Operations are counted by
    ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions; MACs = FLOPs / 2).

    Args:
        network: The early-exit network; its current thresholds decide which heads run.
        input_shape: Input shape; defaults to ``network.input_shape``. The batch size is set to 1.

    Returns:
        ``network.num_exits`` ints.

    Example:
        >>> net = EarlyExitNetwork(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 3)), (1, 4), [[]], [0.9])
        >>> exit_macs(net)  # exit 0: 4*8 + 8*3 (head 0); final: 4*8 + 8*3 (head 0) + 8*3
        [56, 80]
    """
    block_macs, head_macs = mac_parts(network, input_shape)
    return runtime.exit_costs(block_macs, head_macs, network.thresholds)


def mac_parts(network: EarlyExitNetwork, input_shape: Sequence[int] | None = None) -> tuple[list[int], list[int]]:
    """MACs of every block and of every exit head, for one sample (thresholds aside).

    Example:
        >>> net = EarlyExitNetwork(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 3)), (1, 4), [[]], [0.9])
        >>> mac_parts(net)
        ([32, 24], [24])
    """
    shape = _check_input_shape(network.input_shape if input_shape is None else input_shape)
    x = _zeros_like_params(network, (1, *shape[1:]))  # (1, ...)
    block_macs, head_macs = [], []
    with torch.no_grad(), eval_mode(network):
        for index, block in enumerate(network.blocks):
            flops, x = _count_flops(block, x)
            block_macs.append(flops // 2)
            if index < len(network.exits):
                head_macs.append(_count_flops(network.exits[index], x)[0] // 2)
    return block_macs, head_macs


def _count_flops(module: nn.Module, x: Tensor) -> tuple[int, Tensor]:
    from torch.utils.flop_counter import FlopCounterMode  # imported here: it is slow to import

    with FlopCounterMode(display=False) as counter:
        output = module(x)
    return int(counter.get_total_flops()), output


def measure_segment_latency(
    network: EarlyExitNetwork,
    input_shape: Sequence[int] | None = None,
    batch_sizes: Sequence[int] = (1, 256),
    repeats: int = 20,
    warmup: int = 3,
) -> list[dict[str, Any]]:
    """Wall time of every segment and of the plain network, per batch size, on the network's device.

    Each segment is timed on a full batch of its input (block, exit head and exit decision);
    ``"full"`` rows time the blocks alone, i.e. the network without exits. Runs under no grad in
    eval mode, with ``torch.cuda.synchronize`` around each run on CUDA.

    Args:
        network: The early-exit network.
        input_shape: Shape of one input batch; defaults to ``network.input_shape``; the batch
            dimension is replaced by each of ``batch_sizes``.
        batch_sizes: Batch sizes to time.
        repeats: Timed runs per measurement.
        warmup: Untimed runs first.

    Returns:
        Dicts with ``segment`` (index or ``"full"``), ``batch_size``, ``mean_ms``, ``std_ms``,
        ``min_ms`` and ``device``.
    """
    shape = _check_input_shape(network.input_shape if input_shape is None else input_shape)
    if not batch_sizes or not all(is_int(b) and b > 0 for b in batch_sizes):
        raise ValueError(f"Expected `batch_sizes` to be positive ints, but got {batch_sizes!r}.")
    repeats, warmup = check_int("repeats", repeats, minimum=1), check_int("warmup", warmup, minimum=0)
    device, dtype = _placement(network)
    rows = []
    with torch.no_grad(), eval_mode(network):
        for batch in batch_sizes:
            x = torch.randn((int(batch), *shape[1:]), generator=torch.Generator().manual_seed(0))
            h = x.to(device=device, dtype=dtype)  # (B, ...)
            for index, segment in enumerate(network.segments()):
                rows.append(_row(index, batch, _time(segment, h, repeats, warmup, device), device))
                h = segment.block(h)  # the next segment is timed on the whole batch too
            full = _time(network.blocks, x.to(device=device, dtype=dtype), repeats, warmup, device)
            rows.append(_row("full", batch, full, device))
    return rows


def _time(fn: Callable[[Tensor], Any], x: Tensor, repeats: int, warmup: int, device: torch.device) -> list[float]:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn(x)
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x)
        sync()
        times.append(time.perf_counter() - start)
    return times


def _row(segment: int | str, batch: int, times: list[float], device: torch.device) -> dict[str, Any]:
    ms = [1000.0 * t for t in times]
    return {"segment": segment, "batch_size": int(batch), "mean_ms": statistics.fmean(ms),
            "std_ms": statistics.pstdev(ms), "min_ms": min(ms), "device": str(device)}


def _itemsize(dtype: str | torch.dtype) -> int:
    return torch.empty((), dtype=getattr(torch, dtype) if isinstance(dtype, str) else dtype).element_size()


def boundary_payloads(network: EarlyExitNetwork, boundary_dtype: str = "float32",
                      exit_shares: Sequence[float] | None = None) -> dict[str, Any]:
    """What each segment boundary hands to the next device, per input sample.

    A conv feature map can be many times the raw input: ``worst_case_bytes_per_sample`` (every
    sample crosses every boundary) and, given the share of samples leaving at each exit (final
    included, e.g. ``CalibrationResult.exit_shares``), ``expected_bytes_per_sample``.

    Example:
        >>> net = EarlyExitNetwork(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 3)), (1, 4), [[]], [0.9])
        >>> p = boundary_payloads(net, "float16", [0.75, 0.25])
        >>> p["boundaries"], p["input_bytes_per_sample"], p["expected_bytes_per_sample"]
        ([{'shape': [8], 'dtype': 'float16', 'bytes_per_sample': 16}], 16, 4.0)
    """
    size = _itemsize(boundary_dtype)
    sizes = [math.prod(shape) * size for shape in network.block_output_shapes[:-1]]
    boundaries = [{"shape": list(shape), "dtype": boundary_dtype, "bytes_per_sample": n}
                  for shape, n in zip(network.block_output_shapes[:-1], sizes)]
    expected_bytes = None
    if exit_shares is not None:
        left = [1.0 - sum(exit_shares[: k + 1]) for k in range(len(sizes))]  # share crossing boundary k
        expected_bytes = float(sum(max(share, 0.0) * n for share, n in zip(left, sizes)))
    return {
        "input_bytes_per_sample": math.prod(network.input_shape[1:]) * _itemsize(_placement(network)[1]),
        "worst_case_bytes_per_sample": sum(sizes),
        "expected_bytes_per_sample": expected_bytes,
        "exit_shares": None if exit_shares is None else [float(s) for s in exit_shares],
        "boundaries": boundaries,
    }


def cost_report(network: EarlyExitNetwork, *, exit_shares: Sequence[float] | None = None,
                boundary_dtype: str = "float32", batch_size: int = 1, repeats: int = 20) -> str:
    """A table per segment: MACs, measured latency at ``batch_size``, and the payload to the next device.

    Example:
        >>> net = EarlyExitNetwork(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 3)), (1, 4), [[]], [0.9])
        >>> print(cost_report(net, exit_shares=[0.5, 0.5], repeats=1).splitlines()[0])
        segment | MACs (block + exit) | latency ms (batch 1) | hands over | bytes/sample | x input | share crossing
    """
    block_macs, head_macs = mac_parts(network)
    latency = {row["segment"]: row["mean_ms"] for row in measure_segment_latency(
        network, batch_sizes=(batch_size,), repeats=repeats, warmup=1)}
    payload = boundary_payloads(network, boundary_dtype, exit_shares)
    raw = payload["input_bytes_per_sample"]
    lines = [f"segment | MACs (block + exit) | latency ms (batch {batch_size}) | hands over | bytes/sample | "
             "x input | share crossing"]
    crossed = 1.0
    for index, macs in enumerate(block_macs):
        head = head_macs[index] if index < len(head_macs) else 0
        if index < len(payload["boundaries"]):
            b = payload["boundaries"][index]
            if exit_shares is not None:
                crossed -= exit_shares[index]
            share = "-" if exit_shares is None else f"{max(crossed, 0.0):.3f}"
            hands = f"{tuple(b['shape'])} {b['dtype']} | {b['bytes_per_sample']} | {b['bytes_per_sample'] / raw:.2f} | {share}"
        else:
            hands = "(logits: done) | 0 | 0.00 | -"
        lines.append(f"{index} | {macs} + {head} | {latency[index]:.3f} | {hands}")
    expected_bytes = payload["expected_bytes_per_sample"]
    tail = "" if expected_bytes is None else f"; expected {expected_bytes:.1f} ({expected_bytes / raw:.2f} x input)"
    lines.append(f"payload per input sample: raw input {raw} bytes; worst case "
                 f"{payload['worst_case_bytes_per_sample']} ({payload['worst_case_bytes_per_sample'] / raw:.2f} x input)"
                 f"{tail}; plain network {sum(block_macs)} MACs, {latency['full']:.3f} ms")
    return "\n".join(lines)
