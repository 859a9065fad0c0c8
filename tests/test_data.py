"""Tests for kd_toolkit.data: IDX reading, splits, fast loaders, sample indices, DataModules."""

import gzip
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import (
    BatchSampler,
    ConcatDataset,
    DataLoader,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    Subset,
    TensorDataset,
)
from torchvision import transforms as T
from torchvision.transforms import v2

from kd_toolkit.data import (
    ArrayDataModule,
    DigitsDataModule,
    IndexedDataset,
    MNISTDataModule,
    TensorBatchDataset,
    find_random_transform,
    load_mnist_idx,
    make_loader,
    passthrough_collate,
    split_sizes,
    stratified_split,
    with_sample_indices,
)

MNIST_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist-test"
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
needs_mnist = pytest.mark.skipif(
    not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
    reason=f"real MNIST test files not found in {MNIST_DIR} (shared data, never copied into the repo)",
)


def _write_idx(folder: Path, split: str, n_images: int, n_labels: int | None = None, *, image_magic: int = 2051,
               gz: bool = False, seed: int = 0) -> np.ndarray:
    """Write tiny fake IDX files; returns the labels written."""
    rng = np.random.default_rng(seed)
    prefix = "t10k" if split == "test" else "train"
    n_labels = n_images if n_labels is None else n_labels
    labels = (np.arange(n_labels) % 10).astype(np.uint8)
    images = rng.integers(0, 256, size=(n_images, 28, 28), dtype=np.uint8)
    blobs = {
        f"{prefix}-images-idx3-ubyte": np.array([image_magic, n_images, 28, 28], ">u4").tobytes() + images.tobytes(),
        f"{prefix}-labels-idx1-ubyte": np.array([2049, n_labels], ">u4").tobytes() + labels.tobytes(),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, blob in blobs.items():
        if gz:
            with gzip.open(folder / f"{name}.gz", "wb") as f:
                f.write(blob)
        else:
            (folder / name).write_bytes(blob)
    return labels


# ------------------------------------------------------------------------------------------- IDX
@needs_mnist
def test_load_mnist_idx_real_test_files():
    images, labels = load_mnist_idx(MNIST_DIR, "test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and labels.dtype == np.int64
    assert np.bincount(labels).tolist() == MNIST_TEST_COUNTS
    assert images.max() == 255 and images.min() == 0


@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_idx_torchvision_layout(tmp_path, gz):
    labels = _write_idx(tmp_path / "MNIST" / "raw", "train", 12, gz=gz)
    images, loaded = load_mnist_idx(tmp_path, "train")
    assert images.shape == (12, 28, 28) and loaded.tolist() == labels.tolist()


def test_load_mnist_idx_bad_magic(tmp_path):
    _write_idx(tmp_path, "test", 3, image_magic=2049)
    with pytest.raises(ValueError, match="Expected IDX magic number 2051 .* but got 2049"):
        load_mnist_idx(tmp_path)


def test_load_mnist_idx_count_mismatch(tmp_path):
    _write_idx(tmp_path, "test", 3, n_labels=2)
    with pytest.raises(ValueError, match="Expected as many labels as images, but got 2 labels"):
        load_mnist_idx(tmp_path)


def test_load_mnist_idx_truncated(tmp_path):
    _write_idx(tmp_path, "test", 3)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ValueError, match="data bytes"):
        load_mnist_idx(tmp_path)


def test_load_mnist_idx_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"t10k-images-idx3-ubyte.*t10k-labels-idx1-ubyte"):
        load_mnist_idx(tmp_path, "test")
    with pytest.raises(ValueError, match=r"Expected `split` to be one of \['test', 'train'\]"):
        load_mnist_idx(tmp_path, "val")


# ---------------------------------------------------------------------------------------- splits
def test_stratified_split_proportions_determinism_randomness():
    labels = np.repeat(np.arange(10), [50, 61, 47, 55, 52, 49, 58, 50, 60, 45])  # sorted, like a bad file
    parts = stratified_split(labels, [0.7, 0.1, 0.2], seed=3)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(labels)))  # a partition
    assert [len(p) for p in parts] == [round(len(labels) * f) for f in (0.7, 0.1, 0.2)]
    for c, n in enumerate(np.bincount(labels)):
        for part, frac in zip(parts, (0.7, 0.1, 0.2)):
            assert abs(np.sum(labels[part] == c) - n * frac) <= 1
    again = stratified_split(torch.from_numpy(labels), [0.7, 0.1, 0.2], seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    assert not np.array_equal(parts[2], stratified_split(labels, [0.7, 0.1, 0.2], seed=4)[2])
    in_class_0 = parts[2][labels[parts[2]] == 0]
    assert not np.array_equal(in_class_0, np.arange(len(in_class_0)) + in_class_0.min())  # not a block


@pytest.mark.parametrize("fractions", [[0.5, 0.4], [0.5, 0.5, 0.0], [1.2, -0.2], []])
def test_stratified_split_bad_fractions(fractions):
    with pytest.raises(ValueError, match="Expected `fractions` to be positive floats summing to 1"):
        stratified_split([0, 1, 0, 1], fractions, seed=0)


@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("fractions", [[0.8, 0.2], [0.6, 0.15, 0.25]])
def test_stratified_split_keeps_class_proportions(seed, fractions):
    labels = np.random.default_rng(seed).permutation(np.repeat([0, 1, 2, 3], [300, 60, 25, 15]))  # imbalanced
    parts = stratified_split(labels, fractions, seed=seed)
    assert [len(p) for p in parts] == split_sizes(len(labels), fractions)
    for part, frac in zip(parts, fractions):
        counts = np.bincount(labels[part], minlength=4)
        assert np.abs(counts - np.bincount(labels) * frac).max() <= 1  # every class keeps its share


def test_split_sizes_round_by_largest_remainder():
    assert split_sizes(1797, [0.6, 0.15, 0.25]) == [1078, 270, 449]
    assert split_sizes(527, [0.7, 0.1, 0.2]) == [369, 53, 105]
    assert sum(split_sizes(10, [1 / 3] * 3)) == 10


def test_stratified_split_refuses_classes_too_small_to_stratify():
    with pytest.raises(ValueError, match="Expected every class to have at least 2 samples"):
        stratified_split([0, 0, 0, 0, 1], [0.6, 0.4], seed=0)


def test_stratified_split_needs_1d_labels():
    with pytest.raises(ValueError, match=r"Expected `labels` to be 1-D class ids .* but got shape \(2, 2\)"):
        stratified_split(np.eye(2), [0.5, 0.5], seed=0)


# ---------------------------------------------------------------------------------- fast loaders
def _data(n=50, d=3):
    y = torch.arange(n)
    return y[:, None].float().repeat(1, d), y  # row i is all i, so every batch is checkable


def test_tensor_batch_dataset_matches_plain_indexing():
    x, y = _data()
    ds = TensorBatchDataset(x, y)
    xb, yb = ds.__getitems__([4, 0, 7])
    assert torch.equal(xb, torch.stack([ds[i][0] for i in (4, 0, 7)])) and yb.tolist() == [4, 0, 7]
    batches = list(make_loader(x, y, batch_size=16))
    assert [len(b[1]) for b in batches] == [16, 16, 16, 2]
    assert torch.equal(torch.cat([b[0] for b in batches]), x)
    assert [len(b[1]) for b in make_loader(x, y, batch_size=16, drop_last=True)] == [16, 16, 16]


def test_make_loader_shuffles_with_global_rng():
    x, y = _data()
    loader = make_loader(x, y, batch_size=8, shuffle=True)
    assert isinstance(loader, DataLoader) and loader.generator is None
    torch.manual_seed(0)
    first = torch.cat([yb for _, yb in loader])
    torch.manual_seed(0)
    assert torch.equal(first, torch.cat([yb for _, yb in loader]))
    assert not torch.equal(first, y) and sorted(first.tolist()) == y.tolist()
    for xb, yb in loader:
        assert torch.equal(xb[:, 0], yb.float())


def test_passthrough_collate_handles_single_samples_and_subsets():
    x, y = _data(10)
    xb, yb = passthrough_collate([(x[2], y[2]), (x[5], y[5])])
    assert torch.equal(xb, x[[2, 5]]) and yb.tolist() == [2, 5]
    loader = DataLoader(Subset(TensorBatchDataset(x, y), [9, 1, 4]), batch_size=2, collate_fn=passthrough_collate)
    assert [yb.tolist() for _, yb in loader] == [[9, 1], [4]]


def test_make_loader_survives_lightning_distributed_sampler():
    from pytorch_lightning.utilities.data import _update_dataloader

    x, y = _data(50)
    loader = make_loader(x, y, batch_size=8, shuffle=True)
    seen = []
    for rank in (0, 1):
        sampler = DistributedSampler(loader.dataset, num_replicas=2, rank=rank, shuffle=True, seed=0)
        new = _update_dataloader(loader, sampler=sampler)
        assert new.sampler is sampler and new.batch_size == 8 and new.collate_fn is passthrough_collate
        for xb, yb in new:
            assert torch.equal(xb[:, 0], yb.float())
            seen += yb.tolist()
    assert sorted(set(seen)) == list(range(50)) and len(seen) == 50
    indexed = _update_dataloader(with_sample_indices(loader), sampler=DistributedSampler(loader.dataset, 2, 1))
    for (_xb, yb), idx in indexed:
        assert torch.equal(yb, idx) and len(idx) <= 8


def test_tensor_batch_dataset_errors():
    with pytest.raises(ValueError, match="Expected `x` and `y` to have the same length, but got 3 and 2"):
        TensorBatchDataset(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="Expected `batch_size` to be a positive int, but got 0"):
        make_loader(torch.zeros(3), torch.zeros(3), batch_size=0)


# -------------------------------------------------------------------------------- sample indices
def test_with_sample_indices_keeps_shuffling_and_batches():
    x, y = _data(50)
    loader = make_loader(x, y, batch_size=8, shuffle=True, drop_last=True)
    indexed = with_sample_indices(loader)
    torch.manual_seed(1)
    batches = list(indexed)
    assert [len(idx) for _, idx in batches] == [8] * 6
    order = torch.cat([idx for _, idx in batches])
    assert not torch.equal(order, torch.arange(48)) and len(set(order.tolist())) == 48
    for (xb, yb), idx in batches:
        assert idx.dtype == torch.long
        assert torch.equal(xb, loader.dataset.x[idx]) and torch.equal(yb, y[idx])
    pickle.loads(pickle.dumps((indexed.dataset, indexed.collate_fn)))  # workers/DDP spawn pickle these


def _dict_collate(samples):
    return {"x": torch.stack([s[0] for s in samples]), "y": torch.stack([s[1] for s in samples])}


def test_with_sample_indices_custom_collate_and_batch_sampler():
    x, y = _data(20)
    sampler = BatchSampler(RandomSampler(range(20)), batch_size=6, drop_last=False)
    loader = DataLoader(TensorDataset(x, y), batch_sampler=sampler, collate_fn=_dict_collate)
    batches = list(with_sample_indices(loader))
    assert [len(idx) for _, idx in batches] == [6, 6, 6, 2]
    for batch, idx in batches:
        assert torch.equal(batch["x"], x[idx]) and torch.equal(batch["y"], idx)


def test_with_sample_indices_unbatched_and_subset():
    x, y = _data(5)
    for (xb, yb), idx in with_sample_indices(DataLoader(TensorDataset(x, y), batch_size=None)):
        assert torch.equal(xb, x[idx]) and int(yb) == int(idx)
    loader = DataLoader(Subset(TensorBatchDataset(x, y), [3, 1]), batch_size=2, collate_fn=passthrough_collate)
    (xb, yb), idx = next(iter(with_sample_indices(loader)))
    assert idx.tolist() == [0, 1] and yb.tolist() == [3, 1]  # indices are positions in loader.dataset


def test_indexed_dataset_items_and_default_collate():
    ds = IndexedDataset(TensorDataset(*_data(4)))
    (x, y), i = ds[2]
    assert i == 2 and int(y) == 2 and len(ds) == 4
    (xb, yb), idx = next(iter(DataLoader(ds, batch_size=3, shuffle=True)))  # no special collate needed
    assert torch.equal(yb, idx) and torch.equal(xb[:, 0], idx.float())


def test_with_sample_indices_refuses_iterable_datasets():
    class Stream(IterableDataset):
        def __iter__(self):
            return iter(range(3))

    with pytest.raises(ValueError, match="map-style dataset, but got an IterableDataset"):
        with_sample_indices(DataLoader(Stream(), batch_size=2))


# ------------------------------------------------------------------------------------ transforms
class _ImageSet(TensorBatchDataset):
    def __init__(self, transform=None, target_transform=None):
        super().__init__(torch.zeros(2, 8, 8), torch.zeros(2))
        self.transform, self.target_transform = transform, target_transform


def test_find_random_transform():
    assert find_random_transform(_ImageSet(T.Compose([T.ToTensor(), T.RandomCrop(28)]))) == "RandomCrop"
    assert find_random_transform(_ImageSet(T.ToTensor())) is None
    assert find_random_transform(_ImageSet()) is None
    assert find_random_transform(TensorDataset(torch.zeros(2))) is None
    assert find_random_transform(_ImageSet(T.RandomApply([T.ColorJitter(0.5)]))) == "ColorJitter"
    assert find_random_transform(_ImageSet(T.Compose([T.Compose([T.GaussianBlur(3)])]))) == "GaussianBlur"
    v2_ops = v2.Compose([v2.ToImage(), v2.RandomChoice([v2.RandomHorizontalFlip()])])
    assert find_random_transform(_ImageSet(v2_ops)) == "RandomHorizontalFlip"
    assert find_random_transform(_ImageSet(target_transform=T.RandomErasing())) == "RandomErasing"


def test_find_random_transform_through_wrappers():
    plain, augmented = _ImageSet(T.ToTensor()), _ImageSet(T.Compose([T.ToTensor(), T.RandomRotation(10)]))
    nested = IndexedDataset(Subset(ConcatDataset([plain, Subset(augmented, [0])]), [0, 2]))
    assert find_random_transform(nested) == "RandomRotation"
    assert find_random_transform(Subset(ConcatDataset([plain, plain]), [0])) is None


def test_find_random_transform_torchvision_dataset():
    from torchvision.datasets import FakeData

    assert find_random_transform(FakeData(size=2, transform=T.RandomHorizontalFlip())) == "RandomHorizontalFlip"
    assert find_random_transform(FakeData(size=2, transform=T.ToTensor())) is None


# ----------------------------------------------------------------------------------- DataModules
def _rows(ds) -> Counter:
    return Counter(row.numpy().tobytes() for row in ds.x.flatten(1))


def _check_partition(dm, full_x, sizes, num_classes):
    dm.setup()
    splits = [dm.train_dataset, dm.val_dataset, dm.test_dataset]
    assert [len(ds) for ds in splits] == sizes
    assert sum((_rows(ds) for ds in splits), Counter()) == Counter(r.numpy().tobytes() for r in full_x.flatten(1))
    for ds in splits:  # stratified: every class in every split
        assert ds.x.dtype == torch.float32 and tuple(ds.x.shape[1:]) == dm.input_shape
        assert torch.unique(ds.y).tolist() == list(range(num_classes))
    assert isinstance(dm.train_dataloader().sampler, RandomSampler)
    assert isinstance(dm.val_dataloader().sampler, SequentialSampler)


def test_digits_datamodule():
    from sklearn.datasets import load_digits

    dm = DigitsDataModule(batch_size=32, seed=1)
    assert dm.num_classes == 10 and dm.input_shape == (1, 8, 8)
    full = torch.from_numpy(load_digits().images.astype(np.float32) / 16).unsqueeze(1)
    _check_partition(dm, full, [1078, 270, 449], 10)
    xb, yb = next(iter(dm.train_dataloader()))
    assert xb.shape == (32, 1, 8, 8) and yb.dtype == torch.long and 0 <= xb.min() and xb.max() <= 1
    assert dm.hparams["batch_size"] == 32
    other = DigitsDataModule(seed=2)
    other.setup()
    assert not torch.equal(other.test_dataset.y, dm.test_dataset.y)
    pickle.loads(pickle.dumps(dm))  # DDP spawn pickles the DataModule


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "Expected `batch_size` to be a positive int, but got 0"),
        ({"batch_size": 2.5}, "Expected `batch_size` to be a positive int, but got 2.5"),
        ({"num_workers": -1}, "Expected `num_workers` to be a non-negative int, but got -1"),
        ({"val_fraction": 1.0}, r"Expected `val_fraction` to be a float in \[0, 1\), but got 1.0"),
        ({"test_fraction": -0.1}, r"Expected `test_fraction` to be a float in \[0, 1\)"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, r"Expected `val_fraction \+ test_fraction` to be below 1"),
        ({"seed": "0"}, "Expected `seed` to be an int, but got '0'"),
    ],
)
def test_digits_datamodule_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DigitsDataModule(**kwargs)


@pytest.mark.filterwarnings("ignore:Total length of `list` across ranks is zero")
def test_digits_datamodule_runs_in_a_trainer_without_val_split():
    import pytorch_lightning as pl

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(64, 10)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.layer(x.flatten(1)), y)

        def validation_step(self, batch, batch_idx):
            raise AssertionError("no val split, so no validation batches")

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = DigitsDataModule(val_fraction=0.0, test_fraction=0.0)
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Tiny(), datamodule=dm)
    assert dm.val_dataset is None and dm.val_dataloader() == [] and trainer.global_step == 2


def test_array_datamodule_splits_and_given_sets():
    rng = np.random.default_rng(0)
    x, y = rng.random((200, 4)), np.arange(200) % 4  # float64 -> float32
    dm = ArrayDataModule(x, y, val_fraction=0.2, test_fraction=0.1, batch_size=16)
    assert dm.num_classes == 4 and dm.input_shape == (4,)
    _check_partition(dm, torch.from_numpy(x).float(), [140, 40, 20], 4)
    given = ArrayDataModule(torch.from_numpy(x), torch.from_numpy(y), val=(x[:10], y[:10]) , test=(x[:6], y[:6] + 2))
    given.setup()
    assert len(given.train_dataset) == 200 and len(given.val_dataset) == 10 and len(given.test_dataset) == 6
    assert given.num_classes == 6  # largest label in any split + 1
    no_test = ArrayDataModule(x, y)
    no_test.setup()
    assert no_test.test_dataset is None and no_test.test_dataloader() == []


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((np.zeros((4, 2)), np.zeros(3, int)), {}, r"Expected `y` labels to be integer class ids of shape \(4,\)"),
        ((np.zeros((4, 2)), np.zeros(4)), {}, "integer class ids.*float64"),
        ((np.zeros((4, 2)), -np.ones(4, int)), {}, "labels >= 0"),
        ((np.zeros((4, 2)), np.zeros(4, int)), {"val": (np.zeros((2, 3)), np.zeros(2, int))},
         r"Expected `val` inputs of shape \(N, 2\), but got \(2, 3\)"),
        ((np.zeros((4, 2)), np.zeros(4, int)), {"test": np.zeros(3)}, "Expected `test` to be an \\(x, y\\) pair"),
        ((np.zeros((4, 2)), np.zeros(4, int)), {"batch_size": -1}, "Expected `batch_size` to be a positive int"),
        ((np.array([[0.0, np.nan], [1, 1], [2, 2], [3, np.nan]]), np.zeros(4, int)), {},
         r"Expected `x` to hold finite values, but got 2 NaN and 0 inf entries \(first in sample 0\)"),
        ((torch.tensor([[0.0], [float("inf")], [1.0]]), torch.zeros(3, dtype=torch.long)), {},
         r"Expected `x` to hold finite values, but got 0 NaN and 1 inf entries \(first in sample 1\)"),
        ((np.zeros((4, 2)), np.zeros(4, int)), {"val": (np.array([[1.0, -np.inf]]), np.zeros(1, int))},
         r"Expected `val\[0\]` to hold finite values, but got 0 NaN and 1 inf"),
        ((np.zeros((4, 2)), np.zeros(4, int)), {"test": (np.full((2, 2), np.nan, np.float16), np.zeros(2, int))},
         r"Expected `test\[0\]` to hold finite values, but got 4 NaN"),
    ],
)
def test_array_datamodule_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ArrayDataModule(*args, **kwargs)


def test_array_datamodule_accepts_finite_and_integer_inputs():
    dm = ArrayDataModule(np.arange(8).reshape(4, 2), np.array([0, 1, 0, 1]), val_fraction=0.0)  # ints: no check
    dm.setup()
    assert len(dm.train_dataset) == 4


def test_array_datamodule_too_small_split():
    dm = ArrayDataModule(np.zeros((3, 2)), np.array([0, 1, 2]), val_fraction=0.1)
    with pytest.raises(ValueError, match="Expected a non-empty val split"):
        dm.setup()


@needs_mnist
def test_mnist_datamodule_test_files_only():
    dm = MNISTDataModule(MNIST_DIR, normalize=False, seed=0)
    assert dm.num_classes == 10 and dm.input_shape == (1, 28, 28)
    images, _ = load_mnist_idx(MNIST_DIR)
    _check_partition(dm, torch.from_numpy(images).float().div(255).unsqueeze(1), [7000, 1000, 2000], 10)
    test_counts = np.bincount(dm.test_dataset.y.numpy())
    assert np.abs(test_counts - np.array(MNIST_TEST_COUNTS) * 0.2).max() <= 1  # stratified within one sample
    assert 0 <= dm.train_dataset.x.min() and dm.train_dataset.x.max() <= 1
    normalized = MNISTDataModule(str(MNIST_DIR), batch_size=64)
    normalized.setup()
    assert abs(float(normalized.train_dataset.x.mean())) < 0.05  # (x - 0.1307) / 0.3081
    assert next(iter(normalized.train_dataloader()))[0].shape == (64, 1, 28, 28)


def test_mnist_datamodule_with_train_files(tmp_path):
    _write_idx(tmp_path, "train", 100, gz=True)
    _write_idx(tmp_path, "test", 30, seed=1)
    dm = MNISTDataModule(tmp_path, val_fraction=0.2, test_fraction=0.5)  # test_fraction unused here
    dm.setup()
    assert [len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)] == [80, 20, 30]
    assert torch.unique(dm.val_dataset.y).tolist() == list(range(10))


def test_mnist_datamodule_missing_files(tmp_path):
    dm = MNISTDataModule(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"t10k-images-idx3-ubyte.*Pass `download=True` or the directory"):
        dm.setup()
    with pytest.raises(ValueError, match="Expected `data_dir` to be a str or Path, but got None"):
        MNISTDataModule(None)


def test_datamodules_build_from_yaml(tmp_path):
    import pytorch_lightning as pl
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(pl.LightningDataModule, "data")
    for yaml, cls in [
        ("data:\n  class_path: kd_toolkit.data.DigitsDataModule\n  init_args:\n    batch_size: 16\n", DigitsDataModule),
        (f"data:\n  class_path: kd_toolkit.data.MNISTDataModule\n  init_args:\n    data_dir: {tmp_path}\n"
         "    normalize: false\n", MNISTDataModule),
    ]:
        instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # renamed in 4.49
        dm = instantiate(parser.parse_string(yaml)).data
        assert type(dm) is cls
    assert dm.data_dir == tmp_path and dm.normalize is False
