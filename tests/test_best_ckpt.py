"""``best.ckpt``: a stable name for the best checkpoint, beside ``best-<epoch>-<metric>.ckpt``."""

from __future__ import annotations

from pathlib import Path

from kd_toolkit import KnowledgeDistillationTraining
from kd_toolkit._io import load_weights
from kd_toolkit.core.checkpoint import SafeModelCheckpoint
from kd_toolkit.data import DigitsDataModule
from kd_toolkit.models import create_model


def test_best_ckpt_is_a_copy_of_the_best_checkpoint(tmp_path: Path) -> None:
    kd = KnowledgeDistillationTraining(
        student_model=create_model("digits_student"), datamodule=DigitsDataModule(), max_epoch=2, learning_rate=1e-2,
        precision=32, default_root_dir=tmp_path, enable_progress_bar=False, quiet=True, limit_train_batches=2)
    kd.fit()
    best = Path(kd.best_checkpoint)
    alias = best.parent / "best.ckpt"
    assert best.name.startswith("best-") and alias.is_file()
    assert alias.read_bytes() == best.read_bytes()  # the same weights and digest: every load path accepts it
    load_weights(create_model("digits_student"), alias)
    assert not list(best.parent.glob("*.tmp"))  # written atomically
    assert sorted(p.name for p in best.parent.iterdir()) == sorted([best.name, "best.ckpt", "last.ckpt"])


def test_best_alias_only_for_one_monitored_best() -> None:
    assert SafeModelCheckpoint(monitor="val_acc", mode="max", save_top_k=1).best_alias == "best.ckpt"
    assert SafeModelCheckpoint(monitor=None, filename="last").best_alias is None  # the last-epoch callback
    assert SafeModelCheckpoint(monitor="val_acc", save_top_k=3).best_alias is None  # which one would it be?
    assert SafeModelCheckpoint(monitor="val_acc", best_alias=None).best_alias is None
