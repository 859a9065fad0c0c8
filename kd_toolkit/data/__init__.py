"""Data: fast in-memory loaders, stratified splits, MNIST IDX reading and DataModules.

The DataModules keep every split as in-memory tensors behind :class:`TensorBatchDataset`, whose
``__getitems__`` lets torch's DataLoader fetch a whole batch with one indexing operation. Splits are
stratified and random with a fixed ``seed``; shuffling uses torch's global RNG (seeded by
``seed_everything``) so that a resumed run sees the same batches.

* :mod:`kd_toolkit.data.loaders`: :class:`TensorBatchDataset`, :func:`make_loader`, :func:`passthrough_collate`
* :mod:`kd_toolkit.data.splits`: :func:`stratified_split`, :func:`split_sizes`
* :mod:`kd_toolkit.data.mnist`: :func:`load_mnist_idx`, :func:`mnist_tensors`, :class:`MNISTDataModule`, ``MNIST_MEAN``/``MNIST_STD``
* :mod:`kd_toolkit.data.modules`: :class:`DigitsDataModule` (the embedded default), :class:`ArrayDataModule`
* re-exported from :mod:`kd_toolkit.distillation.cache`: :class:`IndexedDataset`,
  :func:`with_sample_indices`, :func:`find_random_transform`

Example:
    >>> from kd_toolkit.data import DigitsDataModule, make_loader
    >>> DigitsDataModule().num_classes
    10
"""

from kd_toolkit.data.loaders import TensorBatchDataset, make_loader, passthrough_collate
from kd_toolkit.data.mnist import MNIST_MEAN, MNIST_STD, MNISTDataModule, load_mnist_idx, mnist_tensors
from kd_toolkit.data.modules import ArrayDataModule, DigitsDataModule
from kd_toolkit.data.splits import split_sizes, stratified_split
from kd_toolkit.distillation.cache import IndexedDataset, find_random_transform, with_sample_indices

__all__ = [
    "MNIST_MEAN",
    "MNIST_STD",
    "ArrayDataModule",
    "DigitsDataModule",
    "IndexedDataset",
    "MNISTDataModule",
    "TensorBatchDataset",
    "find_random_transform",
    "load_mnist_idx",
    "make_loader",
    "mnist_tensors",
    "passthrough_collate",
    "split_sizes",
    "stratified_split",
    "with_sample_indices",
]
