"""Early-exit networks: exits after every block, batched early-exit inference and segmentation.

A trained classifier split into blocks gets a small classifier ("exit") after every block but the
last. At inference a sample leaves at the first exit whose confidence exceeds that exit's
threshold; the rest of the network only runs on the samples still undecided. Cut into segments,
the network runs on a chain of edge devices: each segment answers for its confident samples and
sends the features of the others to the next device. The exit rule and the chain live in
:mod:`kd_toolkit.early_exit.runtime`; this file builds the network around them.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple, cast

import torch
from torch import Tensor, nn

from kd_toolkit._checks import is_int
from kd_toolkit.early_exit import runtime
from kd_toolkit.early_exit.runtime import ConfidenceRule, check_confidence, confidence_scores, eval_mode

__all__ = ["EarlyExitNetwork", "EarlyExitNetworkSegmentor", "EarlyExitPrediction"]

_ALREADY_OFF = contextlib.nullcontext()  # predict under a caller's no_grad: no second context to enter and leave


class EarlyExitPrediction(NamedTuple):
    """Result of :meth:`EarlyExitNetwork.predict`, in the order of the input batch."""

    predictions: Tensor  # (B,) long, predicted class
    exit_index: Tensor  # (B,) long, exit each sample left at (num_exits - 1 is the final one)
    logits: Tensor  # (B, C), logits of the exit each sample left at


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
        check_confidence(confidence)
        if not is_last:
            if exit_head is None:
                raise ValueError("Expected `exit_head` to be an nn.Module for a segment that is not the last, "
                                 "but got None.")
            if not runtime.is_threshold(threshold):
                raise ValueError(f"Expected `threshold` to be a number in (0, 1], but got {threshold!r}.")
        self.block = block
        self.exit_head = exit_head
        self.threshold = None if is_last else float(threshold)  # type: ignore[arg-type]
        self.confidence: ConfidenceRule = confidence
        self.is_last = bool(is_last)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        result = runtime.block_step(self.block, self.exit_head, self.threshold, self.confidence, x,
                                    skip_closed_head=False)  # logits of every sample, even at a closed exit
        return runtime.hand_over(result, self.is_last)


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

    _steps: tuple[Any, ...] | None  # predict's cached chain steps, the confidence rule they use, their parts

    def __init__(self, model: nn.Module, input_shape: Sequence[int],
                 neurons_in_exit_layers: int | Sequence[Sequence[int]], thresholds: Sequence[float], *,
                 confidence: ConfidenceRule = "max_prob") -> None:
        super().__init__()
        check_confidence(confidence)
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
        self._module_list: tuple[nn.Module, ...] = tuple(self.modules())

    def train(self, mode: bool = True) -> EarlyExitNetwork:
        """Set the training flag (``eval()`` calls this) and refresh the module list ``predict`` restores."""
        super().train(mode)
        self._module_list = tuple(self.modules())
        self._steps = None
        return self

    @property
    def thresholds(self) -> list[float]:
        """Exit thresholds, ``num_exits - 1`` values in (0, 1]; assigning validates them."""
        return list(self._thresholds)

    @thresholds.setter
    def thresholds(self, thresholds: Sequence[float]) -> None:
        self._thresholds = runtime.check_thresholds(thresholds, self.num_exits - 1)
        self._steps = None  # predict's chain steps, rebuilt on next use

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

    def _parts(self, index: int) -> tuple[nn.Module, nn.Module | None, float | None]:
        """Block, exit head and threshold of exit ``index`` (no head nor threshold for the final one)."""
        if index == self.num_exits - 1:
            return self.blocks[index], None, None
        return self.blocks[index], self.exits[index], self._thresholds[index]

    def predict(self, x: Tensor) -> EarlyExitPrediction:
        """Batched early-exit inference under ``torch.no_grad()`` in eval mode.

        Block by block, the confident samples leave the batch and later blocks run only on the
        samples still undecided; the final exit takes the rest. Heads of exits whose threshold is
        1.0 are not run. Results are in input order, and the training flags of all submodules are
        restored afterwards. The submodules and chain steps are taken at construction and at every
        ``train()``/``eval()`` (and thresholds change): call ``eval()`` after replacing a submodule.
        A batch of one sample takes a lean path (:func:`runtime.run_one`: the decision in Python floats from one
        host transfer of the logits, no indexing), with the same results as the batched one.
        """
        cached = getattr(self, "_steps", None)  # absent in a network pickled before the cache existed
        if cached is None or cached[1] != self.confidence or len(cached) < 3:  # batch-1 latency counts microseconds
            parts = [self._parts(i) for i in range(self.num_exits)]
            cached = self._steps = ([functools.partial(runtime.block_step, *p, self.confidence) for p in parts],
                                    self.confidence, parts)
        modules = getattr(self, "_module_list", None) or tuple(self.modules())
        training = [m for m in modules if m.training]
        with torch.no_grad() if torch.is_grad_enabled() else _ALREADY_OFF:
            if not training:  # already in eval mode: nothing to switch or restore
                return self._run(cached, x)
            with eval_mode(self, training):
                return self._run(cached, x)

    def _run(self, cached: tuple[Any, ...], x: Tensor) -> EarlyExitPrediction:
        if x.ndim > 0 and x.shape[0] == 1:  # one sample: the lean path, same results (runtime.run_one)
            return EarlyExitPrediction(*runtime.run_one(cached[2], x, self.confidence))
        return EarlyExitPrediction(*runtime.run_chain(cached[0], x, self.num_classes))

    def segments(self) -> list[EarlyExitNetworkSegmentor]:
        """One :class:`EarlyExitNetworkSegmentor` per block, sharing this network's modules."""
        last = self.num_exits - 1
        return [EarlyExitNetworkSegmentor(*self._parts(i), self.confidence, i == last) for i in range(self.num_exits)]


def _zeros_like_params(module: nn.Module, shape: Sequence[int]) -> Tensor:
    """Zeros on the device and in the dtype of ``module``'s parameters."""
    reference = next(module.parameters(), None)
    return torch.zeros(tuple(shape)) if reference is None else reference.new_zeros(tuple(shape))


def _placement(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and dtype of ``module``'s parameters (CPU and the default dtype without any)."""
    reference = next(module.parameters(), None)
    if reference is None:
        return torch.device("cpu"), torch.get_default_dtype()
    return reference.device, reference.dtype


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
    if not ok or len(input_shape) < 1 or not all(is_int(d) and d > 0 for d in input_shape):
        raise ValueError(
            f"Expected `input_shape` to be a sequence of positive ints such as (1, 3, 32, 32), but got {input_shape!r}."
        )
    return tuple(int(d) for d in input_shape)


def _infer_block_shapes(blocks: nn.Sequential, input_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Dry-run the blocks on zeros; return each block's output shape without the batch dim."""
    x = _zeros_like_params(blocks, input_shape)  # (B, ...)
    shapes = []
    with torch.no_grad(), eval_mode(blocks):
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
    if is_int(neurons) and cast(int, neurons) > 0:
        return [[int(cast(int, neurons))] for _ in range(num_exits)]
    ok = isinstance(neurons, Sequence) and len(neurons) == num_exits and all(
        isinstance(sizes, Sequence) and all(is_int(n) and n > 0 for n in sizes) for sizes in neurons
    )
    if not ok:
        raise ValueError(
            f"Expected `neurons_in_exit_layers` to be a positive int or a list of {num_exits} lists of positive ints "
            f"(one per exit: blocks - 1, the final block has no exit), but got {neurons!r}."
        )
    return [[int(n) for n in sizes] for sizes in neurons]  # type: ignore[union-attr]


def _exit_head(in_features: int, hidden: list[int], num_classes: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    for size in hidden:
        layers += [nn.Linear(in_features, size), nn.ReLU()]
        in_features = size
    layers.append(nn.Linear(in_features, num_classes))
    return nn.Sequential(*layers)

