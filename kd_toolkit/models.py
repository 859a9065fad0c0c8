"""THE model registry of kd_toolkit (timm-style, ``timm/models/_registry.py``) and the small reference models.

Every reference model registers here with :func:`register_model`, whatever method it serves: the MLPs
and CNNs below, the FitNets models (``ResNet18``, ``ResNet50``, ``MultiBranchNet``, ``ThinDeepCNN``, ``FitNetMNIST``,
``FitNetTeacherMNIST``, ``WideCNN`` in :mod:`kd_toolkit.fitnets.models`) and the early-exit models
(:mod:`kd_toolkit.early_exit.models`). Those method modules are imported on the first lookup of a name
not registered yet and by :func:`list_models`, so ``import kd_toolkit.models`` stays cheap (no
torchvision).

Every model is a plain ``nn.Module`` that returns logits ``(B, num_classes)`` (``MultiBranchNet``:
``(logits, features)``, as its seed's); inputs are images ``(B, C, H, W)`` or flat features ``(B, F)``
(MLPs start with ``nn.Flatten``).

Example:
    >>> model = create_model("digits_student")
    >>> model(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch  # noqa: F401  (the doctests use it)
from torch import Tensor, nn

__all__ = ["MLP", "LeNet", "SmallCNN", "create_model", "list_models", "model_entrypoint", "register_model"]

_ModelFn = TypeVar("_ModelFn", bound=Callable[..., nn.Module])
_MODEL_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
#: Method modules whose models register on import; imported lazily (a missing one is skipped).
_MODEL_MODULES = ("kd_toolkit.fitnets.models", "kd_toolkit.early_exit.models", "kd_toolkit.pipeline.seed_models")


# ---------------------------------------------------------------------------------------- checks
def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Expected `{name}` to be a positive int, but got {value!r}.")


def _check_dropout(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"Expected `{name}` to be a float in [0, 1), but got {value!r}.")


def _check_sizes(name: str, sizes: Any, allow_empty: bool) -> tuple[int, ...]:
    ok = isinstance(sizes, Sequence) and not isinstance(sizes, str) and (allow_empty or len(sizes) > 0)
    if not ok or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes):
        kind = "a sequence of positive ints" if allow_empty else "a non-empty sequence of positive ints"
        raise ValueError(f"Expected `{name}` to be {kind}, but got {sizes!r}.")
    return tuple(sizes)


# ---------------------------------------------------------------------------------------- models
class MLP(nn.Module):
    """Multi-layer perceptron with ReLU hidden layers (Hinton et al., 2015 MNIST teacher/students).

    Args:
        in_features: Flattened input size (``C * H * W`` for images).
        hidden_sizes: Width of each hidden layer; empty gives a linear classifier.
        num_classes: Number of output logits.
        dropout: Dropout after each hidden layer.
        input_dropout: Dropout on the flattened input.

    Example:
        >>> MLP(64, [32, 16])(torch.zeros(4, 1, 8, 8)).shape
        torch.Size([4, 10])
    """

    def __init__(self, in_features: int, hidden_sizes: Sequence[int], num_classes: int = 10, dropout: float = 0.0,
                 input_dropout: float = 0.0) -> None:
        super().__init__()
        _check_positive_int("in_features", in_features)
        sizes = _check_sizes("hidden_sizes", hidden_sizes, allow_empty=True)
        _check_positive_int("num_classes", num_classes)
        _check_dropout("dropout", dropout)
        _check_dropout("input_dropout", input_dropout)
        layers: list[nn.Module] = [nn.Flatten()]  # (B, ...) -> (B, in_features)
        if input_dropout > 0:
            layers.append(nn.Dropout(input_dropout))
        width = in_features
        for size in sizes:
            layers += [nn.Linear(width, size), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, num_classes))  # (B, num_classes) logits
        self.net = nn.Sequential(*layers)
        self.in_features, self.hidden_sizes, self.num_classes = in_features, sizes, num_classes

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """Small convolutional classifier for 8x8 digits up to 28x28 MNIST and beyond.

    Each entry of ``channels`` is a block ``conv3x3 -> ReLU -> maxpool2`` (``ceil_mode`` so tiny maps
    survive); adaptive pooling to 2x2 then makes the classifier independent of the input size.
    Feature taps: ``features.{i}`` (layers of the blocks) and ``classifier``.

    Args:
        in_channels: Input channels.
        num_classes: Number of output logits.
        channels: Output channels of each conv block.
        hidden: Width of the hidden fully connected layer.
        dropout: Dropout before the last linear layer.

    Example:
        >>> model = SmallCNN()
        >>> model(torch.zeros(2, 1, 8, 8)).shape, model(torch.zeros(2, 1, 28, 28)).shape
        (torch.Size([2, 10]), torch.Size([2, 10]))
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, channels: Sequence[int] = (16, 32),
                 hidden: int = 64, dropout: float = 0.0) -> None:
        super().__init__()
        _check_positive_int("in_channels", in_channels)
        _check_positive_int("num_classes", num_classes)
        widths = _check_sizes("channels", channels, allow_empty=False)
        _check_positive_int("hidden", hidden)
        _check_dropout("dropout", dropout)
        layers: list[nn.Module] = []
        previous = in_channels
        for width in widths:  # (B, C, H, W) -> (B, width, ceil(H/2), ceil(W/2))
            layers += [nn.Conv2d(previous, width, 3, padding=1), nn.ReLU(),
                       nn.MaxPool2d(2, ceil_mode=True)]
            previous = width
        layers.append(nn.AdaptiveAvgPool2d(2))  # (B, channels[-1], 2, 2)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),  # (B, channels[-1] * 4)
            nn.Linear(previous * 4, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),  # (B, num_classes) logits
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class LeNet(nn.Module):
    """LeNet-5 (LeCun et al., 1998) for 28x28 inputs, split for early exits (seed 000 convention).

    ``self.net`` is ``nn.Sequential(block1, block2, block3)``: exits attach after each block and the
    last block ends with the classifier, so ``forward(x) = self.net(x)`` returns logits.

    Args:
        in_channels: Input channels.
        num_classes: Number of output logits.

    Example:
        >>> model = LeNet()
        >>> len(model.net), model(torch.zeros(2, 1, 28, 28)).shape
        (3, torch.Size([2, 10]))
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        _check_positive_int("in_channels", in_channels)
        _check_positive_int("num_classes", num_classes)
        block1 = nn.Sequential(  # (B, C, 28, 28) -> (B, 6, 14, 14)
            nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2))
        block2 = nn.Sequential(  # (B, 6, 14, 14) -> (B, 16, 5, 5)
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2))
        block3 = nn.Sequential(  # (B, 16, 5, 5) -> (B, num_classes)
            nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes))
        self.net = nn.Sequential(block1, block2, block3)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


# -------------------------------------------------------------------------------------- registry
def register_model(name: str) -> Callable[[_ModelFn], _ModelFn]:
    """Decorator that registers a model factory under ``name`` for :func:`create_model`.

    Re-registering the same function (e.g. on module reload) is allowed; taking a name already
    used by another factory raises ``ValueError``.

    Example:
        >>> @register_model("tiny_doc_mlp")
        ... def tiny_doc_mlp(**kwargs):
        ...     return MLP(4, [], **kwargs)
        >>> create_model("tiny_doc_mlp", num_classes=3)(torch.zeros(1, 4)).shape
        torch.Size([1, 3])
        >>> _ = _MODEL_REGISTRY.pop("tiny_doc_mlp")  # keep the shared registry clean
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"Expected `name` to be a non-empty str, but got {name!r}.")

    def decorator(fn: _ModelFn) -> _ModelFn:
        existing = _MODEL_REGISTRY.get(name)
        if existing is not None and (existing.__module__, existing.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(f"Expected a new model name, but {name!r} is already registered to "
                             f"{existing.__module__}.{existing.__qualname__}; choose another name.")
        _MODEL_REGISTRY[name] = fn
        return fn

    return decorator


def _module_exists(name: str) -> bool:
    """Whether module ``name`` can be imported, without importing a parent that is not a package."""
    parent = name.rpartition(".")[0]
    try:
        parent_spec = importlib.util.find_spec(parent)
        if parent_spec is None or parent_spec.submodule_search_locations is None:
            return False  # e.g. ``kd_toolkit/early_exit.py`` before it became a package
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


def _import_model_modules() -> None:
    """Import the method modules of :data:`_MODEL_MODULES` that exist (each registers its models once)."""
    for name in _MODEL_MODULES:
        if _module_exists(name):
            importlib.import_module(name)


def model_entrypoint(name: str) -> Callable[..., nn.Module]:
    """The factory (function or class) registered under ``name``.

    Raises:
        ValueError: For an unknown name (the message lists the registered ones).

    Example:
        >>> model_entrypoint("lenet").__name__
        '_lenet'
    """
    if name not in _MODEL_REGISTRY:
        _import_model_modules()
    if name not in _MODEL_REGISTRY:
        raise ValueError(f"Expected `name` to be one of {list_models()}, but got {name!r}.")
    return _MODEL_REGISTRY[name]


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model; ``kwargs`` (e.g. ``num_classes``) override the factory's defaults.

    Example:
        >>> create_model("mnist_student_30", num_classes=5)(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 5])
        >>> type(create_model("ThinDeepCNN", num_classes=3)).__name__  # a FitNets model, imported on demand
        'ThinDeepCNN'
    """
    return model_entrypoint(name)(**kwargs)


def list_models() -> list[str]:
    """Sorted names of the registered models (the method modules' included).

    Example:
        >>> "lenet" in list_models() and "WideCNN" in list_models()
        True
    """
    _import_model_modules()
    return sorted(_MODEL_REGISTRY)


def _build(cls: Callable[..., nn.Module], defaults: dict[str, Any], kwargs: dict[str, Any]) -> nn.Module:
    return cls(**{**defaults, **kwargs})


@register_model("digits_teacher")
def _digits_teacher(**kwargs: Any) -> nn.Module:
    """MLP 64-256-256-10 with dropout 0.2 for 8x8 digits."""
    return _build(MLP, {"in_features": 64, "hidden_sizes": (256, 256), "dropout": 0.2}, kwargs)


@register_model("digits_student")
def _digits_student(**kwargs: Any) -> nn.Module:
    """MLP 64-16-10, no dropout."""
    return _build(MLP, {"in_features": 64, "hidden_sizes": (16,)}, kwargs)


@register_model("digits_cnn_teacher")
def _digits_cnn_teacher(**kwargs: Any) -> nn.Module:
    """SmallCNN with two blocks (32, 64) for 8x8 digits."""
    return _build(SmallCNN, {"channels": (32, 64), "hidden": 128, "dropout": 0.2}, kwargs)


@register_model("digits_cnn_student")
def _digits_cnn_student(**kwargs: Any) -> nn.Module:
    """SmallCNN with blocks (4, 8) and a 16-unit hidden layer for 8x8 digits (1,034 parameters): the
    pipeline's default digits student (KD helped it on 8 of 10 seeds; see the README)."""
    return _build(SmallCNN, {"channels": (4, 8), "hidden": 16}, kwargs)


@register_model("mnist_teacher")
def _mnist_teacher(**kwargs: Any) -> nn.Module:
    """MLP 784-1200-1200-10, dropout 0.5, input dropout 0.2 (Hinton et al., 2015)."""
    return _build(MLP, {"in_features": 784, "hidden_sizes": (1200, 1200), "dropout": 0.5, "input_dropout": 0.2},
                  kwargs)


@register_model("mnist_student_800")
def _mnist_student_800(**kwargs: Any) -> nn.Module:
    """MLP 784-800-800-10 (Hinton et al., 2015 distilled student)."""
    return _build(MLP, {"in_features": 784, "hidden_sizes": (800, 800)}, kwargs)


@register_model("mnist_student_30")
def _mnist_student_30(**kwargs: Any) -> nn.Module:
    """MLP 784-30-30-10, a very small student."""
    return _build(MLP, {"in_features": 784, "hidden_sizes": (30, 30)}, kwargs)


@register_model("mnist_cnn_teacher")
def _mnist_cnn_teacher(**kwargs: Any) -> nn.Module:
    """SmallCNN with three blocks (32, 64, 128) for 28x28 MNIST."""
    return _build(SmallCNN, {"channels": (32, 64, 128), "hidden": 128, "dropout": 0.25}, kwargs)


@register_model("lenet")
def _lenet(**kwargs: Any) -> nn.Module:
    """LeNet-5 for 28x28, split into three blocks for early exits."""
    return _build(LeNet, {}, kwargs)
