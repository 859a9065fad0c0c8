"""Early-exit networks: exits after every block, batched early-exit inference and segmentation.

A trained classifier split into blocks gets a small classifier ("exit") after every block but the
last. At inference a sample leaves at the first exit whose confidence exceeds that exit's
threshold; the rest of the network only runs on the samples still undecided. Cut into segments,
the network runs on a chain of edge devices: each segment answers for its confident samples and
sends the features of the others to the next device.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Iterator, Sequence
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

__all__ = ["EarlyExitNetwork", "EarlyExitNetworkSegmentor", "EarlyExitPrediction", "average_macs",
           "confidence_scores", "exit_macs"]

ConfidenceRule = Literal["max_prob", "entropy"]
_CONFIDENCE_RULES = ("max_prob", "entropy")


class EarlyExitPrediction(NamedTuple):
    """Result of :meth:`EarlyExitNetwork.predict`, in the order of the input batch."""

    predictions: Tensor  # (B,) long, predicted class
    exit_index: Tensor  # (B,) long, exit each sample left at (num_exits - 1 is the final one)
    logits: Tensor  # (B, C), logits of the exit each sample left at


def confidence_scores(logits: Tensor, confidence: ConfidenceRule = "max_prob") -> Tensor:
    """Confidence in [0, 1] of each row of ``logits``; a sample exits when it is > the threshold.

    Args:
        logits: Exit logits, shape ``(B, C)``.
        confidence: ``"max_prob"`` (largest softmax probability) or ``"entropy"``
            (``1 - H(p) / log(C)``, 1 for a one-hot distribution, 0 for a uniform one).

    Returns:
        Scores of shape ``(B,)``.

    Example:
        >>> confidence_scores(torch.tensor([[0.0, 0.0], [100.0, 0.0]]))
        tensor([0.5000, 1.0000])
    """
    _check_confidence(confidence)
    log_p = torch.log_softmax(logits.float(), dim=-1)  # (B, C), float32 even under autocast
    if confidence == "max_prob":
        return log_p.max(dim=-1).values.exp().clamp(0.0, 1.0)  # (B,)
    num_classes = logits.shape[-1]
    if num_classes < 2:
        return torch.ones(logits.shape[:-1], device=logits.device)
    entropy = -(log_p.exp() * log_p).sum(dim=-1)  # (B,)
    return (1.0 - entropy / math.log(num_classes)).clamp(0.0, 1.0)


class EarlyExitNetworkSegmentor(nn.Module):
    """One segment of an early-exit network: a block and its exit, for one device of a chain.

    ``forward`` takes a batch and returns ``(logits, exited, features)``: the exit logits of every
    sample ``(B, C)``, the mask of samples that leave here ``(B,)`` bool, and the block output of
    only the samples that stay (``features[j]`` belongs to the ``j``-th ``False`` of ``exited``),
    ready to send to the next device; ``None`` from the last segment, where every sample exits.
    This batched form replaces the seed's one-sample ``(output, bool)`` return value.

    The segment shares its modules with the network (no copies) and keeps a snapshot of the
    threshold: call :meth:`EarlyExitNetwork.segments` again after changing thresholds. Call
    ``.eval()`` (and use ``torch.no_grad()``) for inference.

    Args:
        block: The block of the split model.
        exit_head: The exit after the block; ``None`` for the last segment, whose block already
            returns logits.
        threshold: Confidence a sample must exceed to leave here, in (0, 1]; ignored when
            ``is_last``.
        confidence: ``"max_prob"`` or ``"entropy"``, see :func:`confidence_scores`.
        is_last: Whether this is the final segment (every sample exits).

    Example:
        >>> seg = EarlyExitNetworkSegmentor(nn.Linear(4, 6), nn.Linear(6, 3), 0.5, "max_prob", False)
        >>> logits, exited, features = seg(torch.randn(5, 4))
        >>> logits.shape, exited.shape, features.shape[0] == int((~exited).sum())
        (torch.Size([5, 3]), torch.Size([5]), True)
    """

    def __init__(self, block: nn.Module, exit_head: nn.Module | None, threshold: float | None,
                 confidence: ConfidenceRule, is_last: bool) -> None:
        super().__init__()
        _check_confidence(confidence)
        if not is_last:
            if exit_head is None:
                raise ValueError("Expected `exit_head` to be an nn.Module for a segment that is not the last, "
                                 "but got None.")
            if not _is_real(threshold) or not 0.0 < threshold <= 1.0:
                raise ValueError(f"Expected `threshold` to be a number in (0, 1], but got {threshold!r}.")
        self.block = block
        self.exit_head = exit_head
        self.threshold = None if is_last else float(threshold)  # type: ignore[arg-type]
        self.confidence: ConfidenceRule = confidence
        self.is_last = bool(is_last)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        features = self.block(x)  # (B, ...)
        logits = features if self.exit_head is None else self.exit_head(features)  # (B, C)
        if self.is_last:
            return logits, torch.ones(logits.shape[0], dtype=torch.bool, device=logits.device), None
        exited = confidence_scores(logits, self.confidence) > self.threshold  # (B,) bool
        return logits, exited, features[~exited]


class EarlyExitNetwork(nn.Module):
    """A classifier split into blocks with an exit after every block but the last (BranchyNet).

    Implements the early-exit scheme of BranchyNet (Teerapittayanon et al., 2016, "BranchyNet:
    Fast Inference via Early Exiting from Deep Neural Networks"). Exits return logits (train them
    with ``CrossEntropyLoss``); confidence is computed only where an exit decision is made. Each
    exit is ``Flatten -> [Linear -> ReLU] * hidden -> Linear(num_classes)``.

    Args:
        model: A module whose ``net`` attribute is an ``nn.Sequential`` of blocks (the seed's
            convention), or an ``nn.Sequential`` of blocks. The last block must return logits
            ``(B, C)``. The blocks are shared with ``model``, not copied.
        input_shape: Shape of one input batch, e.g. ``(1, 3, 32, 32)``; a dry run infers the
            block output shapes (``block_output_shapes``) and ``num_classes``; it runs under
            ``torch.no_grad()`` in eval mode and restores the training flags.
        neurons_in_exit_layers: Hidden layer sizes of each exit, a list of ``blocks - 1`` lists
            (``[]`` for a direct Linear), or an int for one hidden layer of that size everywhere.
        thresholds: ``blocks - 1`` confidences in (0, 1]; a sample leaves an exit when its
            confidence is strictly greater than the threshold, so 1.0 means never exit there.
        confidence: ``"max_prob"`` or ``"entropy"``, see :func:`confidence_scores`.

    Thresholds are a plain attribute, not part of ``state_dict()``; save them with the weights.

    Example:
        >>> blocks = [nn.Sequential(nn.Linear(4, 8), nn.ReLU()), nn.Sequential(nn.Linear(8, 8), nn.ReLU())]
        >>> net = EarlyExitNetwork(nn.Sequential(*blocks, nn.Linear(8, 3)), (1, 4), 16, [0.9, 0.8])
        >>> [tuple(logits.shape) for logits in net(torch.randn(5, 4))]
        [(5, 3), (5, 3), (5, 3)]
        >>> pred = net.predict(torch.randn(5, 4))
        >>> pred.predictions.shape, pred.exit_index.shape, pred.logits.shape
        (torch.Size([5]), torch.Size([5]), torch.Size([5, 3]))
    """

    def __init__(self, model: nn.Module, input_shape: Sequence[int],
                 neurons_in_exit_layers: int | Sequence[Sequence[int]], thresholds: Sequence[float], *,
                 confidence: ConfidenceRule = "max_prob") -> None:
        super().__init__()
        _check_confidence(confidence)
        self.blocks: nn.Sequential = _blocks_of(model)
        num_blocks = len(self.blocks)
        self.input_shape: tuple[int, ...] = _check_input_shape(input_shape)
        shapes = _infer_block_shapes(self.blocks, self.input_shape)
        #: Output shape of every block, without the batch dimension.
        self.block_output_shapes: list[tuple[int, ...]] = shapes
        self.num_classes: int = shapes[-1][0]
        self.num_exits: int = num_blocks
        hidden = _check_neurons(neurons_in_exit_layers, num_blocks - 1)
        self.exits = nn.ModuleList(
            _exit_head(math.prod(shape), sizes, self.num_classes) for shape, sizes in zip(shapes[:-1], hidden)
        )
        reference = next(self.blocks.parameters(), None)
        if reference is not None:  # exits live where the blocks live
            self.exits.to(device=reference.device, dtype=reference.dtype)
        self.confidence: ConfidenceRule = confidence
        self.thresholds = thresholds

    @property
    def thresholds(self) -> list[float]:
        """Exit thresholds, ``num_exits - 1`` values in (0, 1]; assigning validates them."""
        return list(self._thresholds)

    @thresholds.setter
    def thresholds(self, thresholds: Sequence[float]) -> None:
        self._thresholds = _check_threshold_values(thresholds, self.num_exits - 1, "thresholds")

    def forward(self, x: Tensor) -> list[Tensor]:
        """Logits of every exit, final included, for training: ``num_exits`` tensors ``(B, C)``."""
        outputs = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            outputs.append(self.exits[index](x) if index < len(self.exits) else x)
        return outputs

    def confidence_scores(self, logits: Tensor) -> Tensor:
        """Confidence ``(B,)`` of exit logits ``(B, C)`` under this network's rule."""
        return confidence_scores(logits, self.confidence)

    def predict(self, x: Tensor) -> EarlyExitPrediction:
        """Batched early-exit inference under ``torch.no_grad()`` in eval mode.

        Block by block, the confident samples leave the batch and later blocks run only on the
        samples still undecided; the final exit takes the rest. Results are in input order, and
        the training flags of all submodules are restored afterwards.
        """
        steps = [_ExitStep(self, index) for index in range(self.num_exits)]
        with torch.no_grad(), _eval_mode(self):
            return EarlyExitPrediction(*_run_chain(steps, x, self.num_classes))

    def segments(self) -> list[EarlyExitNetworkSegmentor]:
        """One :class:`EarlyExitNetworkSegmentor` per block, sharing this network's modules."""
        last = self.num_exits - 1
        return [EarlyExitNetworkSegmentor(block, self.exits[i] if i < last else None,
                                          self._thresholds[i] if i < last else None, self.confidence, i == last)
                for i, block in enumerate(self.blocks)]


class _ExitStep:
    """Callable ``x -> (logits, exited, features_of_all)`` for exit ``index``; skips never-exit heads."""

    def __init__(self, network: EarlyExitNetwork, index: int) -> None:
        self.network, self.index = network, index

    def __call__(self, x: Tensor) -> tuple[Tensor | None, Tensor, Tensor]:
        net, index = self.network, self.index
        features = net.blocks[index](x)  # (B, ...)
        if index == net.num_exits - 1:
            return features, torch.ones(features.shape[0], dtype=torch.bool, device=features.device), features
        if net._thresholds[index] >= 1.0:  # scores never exceed 1.0: skip the head's compute
            return None, torch.zeros(features.shape[0], dtype=torch.bool, device=features.device), features
        logits = net.exits[index](features)  # (B, C)
        return logits, net.confidence_scores(logits) > net._thresholds[index], features


def _run_chain(steps: Sequence[_ExitStep], x: Tensor, num_classes: int) -> tuple[Tensor, Tensor, Tensor]:
    """Run exit steps on a shrinking batch and scatter the results back to the input order."""
    batch = x.shape[0]
    if batch == 1:  # one sample (edge latency): stop at its exit, no bookkeeping tensors
        for index, step in enumerate(steps):
            logits, exited, x = step(x)
            if logits is not None and bool(exited[0]):
                return logits.argmax(dim=-1), torch.full((1,), index, dtype=torch.long, device=x.device), logits
    exit_index = torch.full((batch,), len(steps) - 1, dtype=torch.long, device=x.device)  # (B,)
    remaining = torch.arange(batch, device=x.device)  # (R,) original positions still undecided
    out: Tensor | None = None
    for index, step in enumerate(steps):
        if remaining.numel() == 0:
            break
        logits, exited, x = step(x)
        if logits is None:
            continue
        if out is None:
            out = logits.new_zeros((batch, logits.shape[-1]))  # (B, C)
        out[remaining[exited]] = logits[exited].to(out.dtype)
        exit_index[remaining[exited]] = index
        remaining, x = remaining[~exited], x[~exited]
    if out is None:  # empty batch
        out = torch.zeros((batch, num_classes), device=x.device)
    return out.argmax(dim=-1), exit_index, out


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
    block_macs, head_macs = _mac_parts(network, input_shape)
    return _exit_costs(block_macs, head_macs, network.thresholds)


def _mac_parts(network: EarlyExitNetwork, input_shape: Sequence[int] | None = None) -> tuple[list[int], list[int]]:
    """MACs of every block and of every exit head, for one sample."""
    shape = _check_input_shape(network.input_shape if input_shape is None else input_shape)
    x = _zeros_like_params(network, (1, *shape[1:]))  # (1, ...)
    block_macs, head_macs = [], []
    with torch.no_grad(), _eval_mode(network):
        for index, block in enumerate(network.blocks):
            flops, x = _count_flops(block, x)
            block_macs.append(flops // 2)
            if index < len(network.exits):
                head_macs.append(_count_flops(network.exits[index], x)[0] // 2)
    return block_macs, head_macs


def _exit_costs(block_macs: Sequence[int], head_macs: Sequence[int], thresholds: Sequence[float]) -> list[int]:
    """Per-exit cost of leaving there, given which heads run (threshold < 1.0)."""
    costs, total = [], 0
    for index, macs in enumerate(block_macs):
        total += macs
        if index == len(head_macs):
            costs.append(total)
            break
        costs.append(total + head_macs[index])
        if thresholds[index] < 1.0:  # the head ran, so samples that go on have paid for it too
            total += head_macs[index]
    return costs


def average_macs(exit_index: Tensor, macs: Sequence[int]) -> float:
    """Average per-sample MACs of a :meth:`EarlyExitNetwork.predict` result.

    Args:
        exit_index: Exit of each sample, ``(N,)``, from ``predict``.
        macs: Cumulative MACs per exit, from :func:`exit_macs` with the same thresholds.

    Example:
        >>> average_macs(torch.tensor([0, 1, 1, 1]), [10, 30])
        25.0
    """
    if exit_index.numel() == 0:
        raise ValueError(f"Expected `exit_index` to be a non-empty tensor, but got {exit_index!r}.")
    table = torch.as_tensor(list(macs), dtype=torch.float64)
    return float(table[exit_index.long().cpu()].mean())


def _zeros_like_params(module: nn.Module, shape: Sequence[int]) -> Tensor:
    """Zeros on the device and in the dtype of ``module``'s parameters."""
    reference = next(module.parameters(), None)
    return torch.zeros(tuple(shape)) if reference is None else reference.new_zeros(tuple(shape))


def _count_flops(module: nn.Module, x: Tensor) -> tuple[int, Tensor]:
    from torch.utils.flop_counter import FlopCounterMode  # imported here: it is slow to import

    with FlopCounterMode(display=False) as counter:
        output = module(x)
    return int(counter.get_total_flops()), output


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Put ``module`` in eval mode and restore every submodule's own training flag afterwards.

    Only the submodules in training mode are touched (none for a network already in eval mode), which
    keeps batch-1 ``predict`` cheap: ``module.eval()`` plus a restore cost ~0.2 ms per call for a LeNet.
    """
    training = [m for m in module.modules() if m.training]
    for m in training:
        m.training = False
    try:
        yield
    finally:
        for m in training:
            m.training = True


def _blocks_of(model: nn.Module) -> nn.Sequential:
    net = getattr(model, "net", None)
    blocks = net if isinstance(net, nn.Sequential) else model
    if not isinstance(blocks, nn.Sequential):
        raise ValueError(
            "Expected `model` to be an nn.Sequential of blocks or a module whose `net` attribute is one, "
            f"but got {type(model).__name__} (its `net` is {type(net).__name__})."
        )
    if len(blocks) < 2:
        raise ValueError(f"Expected `model` to have at least 2 blocks (one exit needs two), but got {len(blocks)}.")
    return blocks


def _check_input_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    ok = isinstance(input_shape, (Sequence, torch.Size)) and not isinstance(input_shape, str)
    if not ok or len(input_shape) < 1 or not all(_is_int(d) and d > 0 for d in input_shape):
        raise ValueError(
            f"Expected `input_shape` to be a sequence of positive ints such as (1, 3, 32, 32), but got {input_shape!r}."
        )
    return tuple(int(d) for d in input_shape)


def _infer_block_shapes(blocks: nn.Sequential, input_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Dry-run the blocks on zeros; return each block's output shape without the batch dim."""
    x = _zeros_like_params(blocks, input_shape)  # (B, ...)
    shapes = []
    with torch.no_grad(), _eval_mode(blocks):
        for index, block in enumerate(blocks):
            try:
                x = block(x)
            except (RuntimeError, ValueError, TypeError, IndexError) as err:
                raise ValueError(
                    f"Expected `input_shape` to fit the model, but got {input_shape!r}: "
                    f"block {index} raised {type(err).__name__}: {err}"
                ) from err
            if not isinstance(x, Tensor):
                raise ValueError(f"Expected every block of `model` to return a Tensor, but block {index} "
                                 f"returned {type(x).__name__}.")
            shapes.append(tuple(x.shape[1:]))
    if len(shapes[-1]) != 1:
        raise ValueError(
            f"Expected the last block of `model` to return logits of shape (B, C), but got shape {tuple(x.shape)}."
        )
    return shapes


def _check_neurons(neurons: int | Sequence[Sequence[int]], num_exits: int) -> list[list[int]]:
    if _is_int(neurons) and neurons > 0:
        return [[int(neurons)] for _ in range(num_exits)]
    ok = isinstance(neurons, Sequence) and len(neurons) == num_exits and all(
        isinstance(sizes, Sequence) and all(_is_int(n) and n > 0 for n in sizes) for sizes in neurons
    )
    if not ok:
        raise ValueError(
            f"Expected `neurons_in_exit_layers` to be a positive int or a list of {num_exits} lists of positive ints "
            f"(one per exit: blocks - 1, the final block has no exit), but got {neurons!r}."
        )
    return [[int(n) for n in sizes] for sizes in neurons]  # type: ignore[union-attr]


def _check_threshold_values(thresholds: Sequence[float], count: int, name: str) -> list[float]:
    values = thresholds.tolist() if hasattr(thresholds, "tolist") else thresholds  # tensors, arrays
    ok = isinstance(values, Sequence) and not isinstance(values, str) and len(values) == count and all(
        _is_real(t) and 0.0 < t <= 1.0 for t in values
    )
    if not ok:
        raise ValueError(
            f"Expected `{name}` to be {count} number(s) in (0, 1] (one per exit except the final one; "
            f"1.0 means never exit there), but got {thresholds!r}."
        )
    return [float(t) for t in values]


def _check_confidence(confidence: str) -> None:
    if confidence not in _CONFIDENCE_RULES:
        raise ValueError(f"Expected `confidence` to be one of {_CONFIDENCE_RULES}, but got {confidence!r}.")


def _exit_head(in_features: int, hidden: list[int], num_classes: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    for size in hidden:
        layers += [nn.Linear(in_features, size), nn.ReLU()]
        in_features = size
    layers.append(nn.Linear(in_features, num_classes))
    return nn.Sequential(*layers)


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
