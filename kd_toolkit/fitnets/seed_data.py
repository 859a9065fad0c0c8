"""Seed 004's data: its ``prepare_dataloaders`` (one ImageFolder, split by ``random_split`` with seed 42) and the
two ``data_dir`` layouts ``train_fitnets`` reads, plus the class count of any loader (``Subset`` chains included).

Layouts of ``data_dir``:

* **the seed's**: one folder per class (``data_dir/<class>/<image>``), split 70/20/10 into train/val/test by
  ``random_split`` with ``torch.Generator().manual_seed(42)``, exactly as the seed's ``prepare_dataloaders``;
* **pre-split**: ``data_dir/train/<class>/<image>``, ``data_dir/val/...`` and optional ``data_dir/test/...``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, random_split

from kd_toolkit._checks import check_float, check_int

__all__ = ["classes_of", "data_layout", "image_folder_loaders", "prepare_dataloaders", "targets_of"]

_RGB_MEAN, _RGB_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_IMAGE_EXT = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _transforms(image_size: int, in_channels: int, augment: bool) -> Any:
    """Resize + (augmentation) + to tensor + normalise; grayscale for ``in_channels == 1``."""
    from torchvision import transforms as T

    mean, std = (_RGB_MEAN, _RGB_STD) if in_channels == 3 else ((0.5,) * in_channels, (0.5,) * in_channels)
    tail = ([T.Grayscale(num_output_channels=1)] if in_channels == 1 else []) + [T.ToTensor(), T.Normalize(mean, std)]
    if not augment:
        return T.Compose([T.Resize((image_size, image_size)), *tail])
    return T.Compose([  # the seed's augmentation
        T.Resize((image_size, image_size)), T.RandomResizedCrop(image_size, scale=(0.8, 1.0)),
        T.RandomHorizontalFlip(), T.RandomRotation(15), T.ColorJitter(0.2, 0.2, 0.2, 0.1), *tail,
    ])


def _has_images(folder: Path) -> bool:
    return any(f.suffix.lower() in _IMAGE_EXT for f in folder.iterdir() if f.is_file())


def data_layout(data_dir: str | os.PathLike) -> str:
    """``"split"`` (``train/`` + ``val/``) or ``"classes"`` (the seed's one folder per class) for ``data_dir``.

    Raises:
        FileNotFoundError: if ``data_dir`` does not exist, or is neither layout (the message shows both).
    """
    root = Path(data_dir)
    both = ("the seed's layout data_dir/<class>/<image> (split 70/20/10 by random_split, seed 42), or "
            "data_dir/train/<class>/<image> + data_dir/val/<class>/<image> (+ optional test/)")
    if not root.is_dir():
        raise FileNotFoundError(f"Expected `data_dir` to be a folder in {both}, but {str(root)!r} does not exist.")
    if (root / "train").is_dir() and (root / "val").is_dir():
        return "split"
    subdirs = sorted(d for d in root.iterdir() if d.is_dir())
    if subdirs and all(_has_images(d) for d in subdirs):
        return "classes"
    found = [d.name for d in subdirs][:8]
    raise FileNotFoundError(f"Expected `data_dir` {str(root)!r} to be in {both}, but it is neither (sub-folders "
                            f"{found}; each class folder must hold images); or pass loaders.")


def _loader(dataset: Dataset, batch_size: int, num_workers: int, shuffle: bool, drop_last: bool = False) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, drop_last=drop_last,
                      pin_memory=torch.cuda.is_available(), persistent_workers=num_workers > 0)


def prepare_dataloaders(path: str | os.PathLike, batch_size: int = 32, num_workers: int = 2, val_split: float = 0.2,
                        test_split: float = 0.1, augment: bool = False, *, image_size: int = 128,
                        in_channels: int = 3) -> tuple[DataLoader, DataLoader, DataLoader | None]:
    """Seed 004's ``prepare_dataloaders``: one ImageFolder at ``path`` split into train/val(/test) loaders.

    Sizes: ``test = int(n * test_split)``, ``val = int(n * val_split)``, train the rest, by ``random_split`` with
    ``torch.Generator().manual_seed(42)`` (the seed's rule, so the same files land in the same split). Each
    loader's ``dataset`` is a ``Subset`` whose ``.dataset.classes`` lists the classes; train shuffles and drops
    the last partial batch. Images are resized to ``image_size`` (the seed's 128) and normalised.

    Unlike the seed, ``augment=True`` augments the training split only (the seed's also changed val/test).

    Returns:
        ``(train_loader, val_loader, test_loader)``; ``test_loader`` is ``None`` when ``test_split == 0``.

    Raises:
        FileNotFoundError: if ``path`` is not in the seed's layout (one folder of images per class).
        ValueError: bad sizes or fractions, or a split that would be empty.
    """
    from torchvision import datasets

    batch_size = check_int("batch_size", batch_size, minimum=1)
    num_workers = check_int("num_workers", num_workers, minimum=0)
    val_split = check_float("val_split", val_split, minimum=0, maximum=1)
    test_split = check_float("test_split", test_split, minimum=0, maximum=1)
    if data_layout(path) != "classes":
        raise FileNotFoundError(f"Expected `path` {os.fspath(path)!r} to hold one folder per class (the seed's "
                                "layout), but it has train/ and val/ folders; point `path` at one of them.")
    plain = datasets.ImageFolder(os.fspath(path), transform=_transforms(image_size, in_channels, False))
    total = len(plain)
    test_size, val_size = int(total * test_split), int(total * val_split)
    train_size = total - val_size - test_size
    if train_size < 1 or val_size < 1:
        raise ValueError(f"Expected `val_split` and `test_split` to leave non-empty train and val splits of the "
                         f"{total} images in {os.fspath(path)!r}, but got train={train_size}, val={val_size}.")
    sizes = [train_size, val_size, test_size] if test_split > 0 else [train_size, val_size]
    subsets = random_split(plain, sizes, generator=torch.Generator().manual_seed(42))
    if augment:  # a dataset of its own, so val/test keep the plain transform
        augmented = datasets.ImageFolder(os.fspath(path), transform=_transforms(image_size, in_channels, True))
        subsets[0].dataset = augmented
    test = _loader(subsets[2], batch_size, num_workers, False) if test_split > 0 else None
    return (_loader(subsets[0], batch_size, num_workers, True, drop_last=len(subsets[0]) > batch_size),
            _loader(subsets[1], batch_size, num_workers, False), test)


def image_folder_loaders(data_dir: str | os.PathLike, image_size: int, in_channels: int, batch_size: int,
                         num_workers: int, augment: bool) -> tuple[DataLoader, DataLoader, DataLoader | None, list[str]]:
    """Train/val(/test) loaders and class names for ``data_dir`` in either layout (see the module docstring)."""
    from torchvision import datasets

    if data_layout(data_dir) == "classes":
        train, val, test = prepare_dataloaders(data_dir, batch_size, num_workers, augment=augment,
                                               image_size=image_size, in_channels=in_channels)
        return train, val, test, list(classes_of(train) or [])
    root = Path(data_dir)
    plain = _transforms(image_size, in_channels, False)
    train_set = datasets.ImageFolder(str(root / "train"), transform=_transforms(image_size, in_channels, augment))
    splits = {"val": datasets.ImageFolder(str(root / "val"), transform=plain)}
    if (root / "test").is_dir():
        splits["test"] = datasets.ImageFolder(str(root / "test"), transform=plain)
    for name, dataset in splits.items():
        if dataset.classes != train_set.classes:
            raise ValueError(f"Expected {name}/ to have the classes of train/ {train_set.classes}, but got {dataset.classes}.")
    test_loader = _loader(splits["test"], batch_size, num_workers, False) if "test" in splits else None
    return (_loader(train_set, batch_size, num_workers, True), _loader(splits["val"], batch_size, num_workers, False),
            test_loader, list(train_set.classes))


def _base(dataset: Any) -> Any:
    """The dataset under ``Subset`` wrappers (``subset.dataset.dataset...``)."""
    for _ in range(16):
        if getattr(dataset, "classes", None) is not None or not hasattr(dataset, "dataset"):
            break
        dataset = dataset.dataset
    return dataset


def classes_of(loader: Any) -> list[Any] | None:
    """The class list of a loader's dataset (``.classes``, looking through ``Subset`` chains), or ``None``."""
    classes = getattr(_base(getattr(loader, "dataset", None)), "classes", None)
    return list(classes) if classes else None


def targets_of(loader: Any) -> torch.Tensor | None:
    """All labels of a loader's dataset when it lists them (``targets`` of an ImageFolder, a ``Subset`` of one, or
    the second tensor of a ``TensorDataset``), else ``None``."""
    dataset: Any = getattr(loader, "dataset", None)
    indices: torch.Tensor | None = None
    while hasattr(dataset, "indices") and hasattr(dataset, "dataset"):  # Subset
        idx = torch.as_tensor(list(dataset.indices), dtype=torch.long)
        indices = idx if indices is None else idx[indices]
        dataset = dataset.dataset
    targets = getattr(dataset, "targets", None)
    tensors = getattr(dataset, "tensors", None)
    if targets is None and isinstance(tensors, tuple) and len(tensors) >= 2:
        targets = tensors[1]
    if targets is None:
        return None
    targets = torch.as_tensor(targets)
    return targets[indices] if indices is not None else targets
