"""What early exit costs: multiply-accumulates per exit (counted by torch) and measured latency.

MACs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions;
MACs = FLOPs / 2) and turned into per-exit costs by the runtime's one cost rule
(:func:`kd_toolkit.early_exit.runtime.exit_costs`), which knows that the heads of closed exits
(threshold 1.0) are skipped.
"""

from __future__ import annotations

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

__all__ = ["exit_macs", "mac_parts", "measure_segment_latency"]


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
