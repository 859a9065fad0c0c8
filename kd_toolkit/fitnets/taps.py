"""Feature taps: capture intermediate activations by dotted module path.

FitNets (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015) matches an intermediate
"guided" layer of the student with a "hint" layer of the teacher. :class:`FeatureTaps` reads those
activations with forward hooks, so models need no special ``forward`` that returns features; the
layers are named by the same dotted paths as ``model.named_modules()`` (``"layer3"``,
``"features.4"``, ``"stages.2.fuse"``).

Paths are resolved when the taps are built, and a bad path fails at once with the nearest valid
names. Taps pickle together with the model they are attached to (needed by DDP spawn).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

__all__ = ["FeatureTaps", "feature_shapes", "tapped_forward"]

# How many close names a bad-path error lists.
_MAX_SUGGESTIONS = 5


class FeatureTaps:
    """Forward hooks that record the outputs of submodules named by dotted path.

    After each forward pass of the model, ``taps.features`` maps every tapped path to the output
    of that module in the latest call (a module called several times in one pass keeps its last
    output). When a module returns a tuple, list or dict, the first tensor found in it (depth
    first, in order) is stored. Used to read FitNets hint/guided layers (Romero et al., ICLR 2015).

    Outputs are stored by reference: a later in-place operation (e.g. ``nn.ReLU(inplace=True)``
    right after a tapped batch norm) changes the stored tensor too; tap the module after it.

    Use it as a context manager for a one-off read (the hooks are removed on exit; the features of
    the last pass stay readable), or keep it and call :meth:`remove` when done.

    Args:
        model: The model whose submodules are tapped.
        paths: One dotted path or a sequence of them, as in ``model.named_modules()``;
            ``""`` taps the model itself.
        detach: Store ``output.detach()`` instead of the output (no gradient through the taps,
            e.g. for a frozen teacher or for inspection).

    Raises:
        ValueError: If ``paths`` is empty, holds a non-string or a duplicate, or names a
            submodule that does not exist (the message lists the nearest valid names).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> with FeatureTaps(model, ["0", "1"]) as taps:
        ...     _ = model(torch.randn(3, 4))
        >>> {path: tuple(t.shape) for path, t in taps.features.items()}
        {'0': (3, 8), '1': (3, 8)}
        >>> len(model[0]._forward_hooks)
        0
    """

    def __init__(self, model: nn.Module, paths: Sequence[str] | str, *, detach: bool = False) -> None:
        self.paths: tuple[str, ...] = _validate_paths(paths)
        self.detach = bool(detach)
        self.features: dict[str, torch.Tensor] = {}
        modules = {path: _resolve(model, path) for path in self.paths}
        self._handles: list[RemovableHandle] = [
            module.register_forward_hook(_TapHook(self, path)) for path, module in modules.items()
        ]

    @property
    def active(self) -> bool:
        """Whether the hooks are still attached (``False`` after :meth:`remove`)."""
        return bool(self._handles)

    def remove(self) -> None:
        """Detach all hooks. Safe to call more than once; stored features are kept."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def clear(self) -> None:
        """Drop the stored features (e.g. to free memory between steps)."""
        self.features = {}

    def _store(self, path: str, output: Any) -> None:
        tensor = _first_tensor(output)
        if tensor is None:
            raise TypeError(
                f"Expected the module at path {path!r} to return a tensor (or a tuple/list/dict "
                f"holding one), but got {type(output).__name__}."
            )
        self.features[path] = tensor.detach() if self.detach else tensor

    def __enter__(self) -> FeatureTaps:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()

    def __getstate__(self) -> dict[str, Any]:
        # Stored activations may be non-leaf tensors (not deep-copyable) and are stale in a copy.
        state = self.__dict__.copy()
        state["features"] = {}
        return state

    def __repr__(self) -> str:
        return f"{type(self).__name__}(paths={list(self.paths)!r}, detach={self.detach}, active={self.active})"


class _TapHook:
    """Picklable forward hook (a module-level class, unlike a closure) that feeds one path."""

    def __init__(self, taps: FeatureTaps, path: str) -> None:
        self.taps = taps
        self.path = path

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        self.taps._store(self.path, output)


def feature_shapes(
    model: nn.Module,
    paths: Sequence[str] | str,
    example_input: torch.Tensor | tuple[Any, ...] | list[Any],
) -> dict[str, torch.Size]:
    """Infer the output shapes of submodules by one dry run of the model.

    The pass runs under ``torch.no_grad()`` with the whole model in eval mode (so batch-norm
    statistics are untouched); every submodule's ``training`` flag is restored afterwards, even if
    the pass fails. Used to size FitNets regressors (Romero et al., ICLR 2015).

    Args:
        model: The model to run.
        paths: Dotted submodule paths, as for :class:`FeatureTaps`.
        example_input: One input tensor, or a tuple/list of positional inputs. It must be on the
            model's device; its batch size shows up as the first dimension of every shape.

    Returns:
        ``{path: torch.Size}`` in the order of ``paths``, batch dimension included.

    Raises:
        ValueError: For a bad path (see :class:`FeatureTaps`) or a tapped module that did not run
            during the forward pass.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.Flatten())
        >>> feature_shapes(model, ["0", "1"], torch.randn(2, 3, 32, 32))
        {'0': torch.Size([2, 8, 16, 16]), '1': torch.Size([2, 2048])}
    """
    args = tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)
    flags = {name: module.training for name, module in model.named_modules()}
    try:
        model.eval()
        with FeatureTaps(model, paths, detach=True) as taps, torch.no_grad():
            model(*args)
    finally:
        for name, module in model.named_modules():
            module.training = flags.get(name, module.training)
    missing = [path for path in taps.paths if path not in taps.features]
    if missing:
        raise ValueError(
            f"Expected the modules at {missing!r} to run during the forward pass of "
            f"{type(model).__name__}, but they were not called; tap a module that `forward` uses."
        )
    return {path: taps.features[path].shape for path in taps.paths}


class _StopForward(Exception):
    """Raised by a forward hook to end a forward pass once every tapped feature is captured."""


class _StopWhenCaptured:
    """Picklable forward hook: stop the pass when ``taps`` holds all its paths (nothing later is needed)."""

    def __init__(self, taps: FeatureTaps) -> None:
        self.taps = taps

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        if len(self.taps.features) == len(self.taps.paths):
            raise _StopForward


def tapped_forward(
    model: nn.Module, paths: Sequence[str], run: Callable[[], Any], *, detach: bool, stop: bool
) -> tuple[dict[str, torch.Tensor], Any]:
    """Call ``run()`` (a forward pass of ``model``) and return ``(features by path, output)``.

    The hooks live only for this call, so none is left on the user's model. With ``stop`` the pass ends
    right after the last tapped module ran (FitNets stage 1 needs nothing later) and ``output`` is ``None``.

    Args:
        model: The model whose submodules are tapped.
        paths: Dotted submodule paths, as for :class:`FeatureTaps`.
        run: A callable running one forward pass of ``model``, e.g. ``lambda: model(x)``.
        detach: Store detached features (see :class:`FeatureTaps`).
        stop: End the pass once every path has been captured.

    Raises:
        RuntimeError: If a tapped module did not run during the pass.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> feats, out = tapped_forward(model, ["1"], lambda: model(torch.randn(3, 4)), detach=True, stop=True)
        >>> tuple(feats["1"].shape), out
        ((3, 8), None)
    """
    taps = FeatureTaps(model, list(paths), detach=detach)
    handles = [model.get_submodule(p).register_forward_hook(_StopWhenCaptured(taps)) for p in taps.paths] if stop else []
    try:
        try:
            output = run()
        except _StopForward:
            output = None
    finally:
        taps.remove()
        for handle in handles:
            handle.remove()
    missing = [p for p in taps.paths if p not in taps.features]
    if missing:
        raise RuntimeError(f"Expected the modules at {missing!r} of {type(model).__name__} to run in the forward pass, "
                           "but they did not; hint layers must be used by `forward`.")
    return taps.features, output


def _validate_paths(paths: Sequence[str] | str) -> tuple[str, ...]:
    if isinstance(paths, str):
        paths = [paths]
    if not isinstance(paths, Sequence):
        raise ValueError(f"Expected `paths` to be a string or a sequence of strings, but got {paths!r}.")
    if len(paths) == 0:
        raise ValueError(f"Expected `paths` to name at least one submodule, but got {paths!r}.")
    bad = [path for path in paths if not isinstance(path, str)]
    if bad:
        raise ValueError(f"Expected `paths` to hold only strings, but got {bad!r} in {paths!r}.")
    duplicates = sorted({path for path in paths if paths.count(path) > 1})
    if duplicates:
        raise ValueError(f"Expected `paths` to be unique, but got {duplicates!r} more than once in {paths!r}.")
    return tuple(paths)


def _resolve(model: nn.Module, path: str) -> nn.Module:
    """``model.get_submodule(path)`` with an error that suggests the nearest valid names."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        pass
    names = [name for name, _ in model.named_modules() if name]
    close = difflib.get_close_matches(path, names, n=_MAX_SUGGESTIONS, cutoff=0.5)
    if close:
        hint = f"Did you mean {', '.join(repr(name) for name in close)}?"
    else:
        hint = f"Valid paths include {', '.join(repr(name) for name in names[:_MAX_SUGGESTIONS])}."
    raise ValueError(
        f"Expected `paths` to name submodules of {type(model).__name__}, but got {path!r}. {hint} "
        "List all valid paths with `[name for name, _ in model.named_modules()]`."
    )


def _first_tensor(output: Any) -> torch.Tensor | None:
    """The first tensor in ``output``, searching tuples, lists and dict values depth first."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        for item in output:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None
