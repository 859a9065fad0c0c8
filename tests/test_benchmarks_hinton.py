"""Protocol 1 (Hinton KD on MNIST) chooses on validation only, and shares its teachers with the other protocols."""

from __future__ import annotations

import json

import pytest

from benchmarks import _common, _mnist, hinton_mnist
from benchmarks._selection import carve_validation
from benchmarks.report import hinton_table, targets_table

HAS_MNIST = (_common.MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file() or (_common.MNIST_DIR / "t10k-images-idx3-ubyte").is_file()
pytestmark = pytest.mark.skipif(not HAS_MNIST, reason="MNIST test files absent")


def test_protocol_one_shares_the_ensemble_and_logit_loss_split():
    # ensemble.py and logit_losses.py carve their validation part this way; the same key shares the teachers.
    fit, val = _mnist.hinton_split(2000, 1000)
    other_fit, other_val = carve_validation(_common.mnist_split(seed=0, n_train=2000, n_test=1000))
    assert fit.key == other_fit.key and (fit.y_train == other_fit.y_train).all()
    assert len(val.y_test) == 200 and len(fit.y_train) == 1800 and (val.y_test == other_val.y_test).all()


def test_choice_is_made_on_validation_and_trained_for_every_seed(tmp_path):
    spec = {"epochs": 1, "temperatures": [2, 8], "search_seeds": [0]}
    cfg = {"seeds": [0, 1], "teacher_epochs": 1, "n_train": 1000, "n_test": 500, "students": {"mnist_student_30": spec}}
    result = hinton_mnist.run(quick=True, out_dir=tmp_path, config=cfg)
    saved = json.loads((tmp_path / "hinton_mnist.json").read_text())
    student = saved["students"]["mnist_student_30"]
    arms, chosen = student["arms"], student["chosen"]
    first, *others = hinton_mnist.WEIGHTS
    kd = {arm: a for arm, a in arms.items() if arm != "plain"}
    # every temperature with the first weights, the other weights at the temperature that won on validation
    sweep = {a["temperature"]: a["val"]["values"][0] for a in kd.values() if a["weights"] == first}
    assert sorted(sweep) == [2.0, 8.0]
    best_t = max(sweep, key=lambda t: sweep[t])
    assert {a["weights"] for a in kd.values() if a["temperature"] == best_t} == {first, *others}
    assert all(a["temperature"] == best_t for a in kd.values() if a["weights"] != first)
    # the choice is the best mean validation accuracy over the search seeds; its test figures cover every seed
    assert kd[chosen["arm"]]["val_search"] == max(a["val_search"] for a in kd.values())
    assert all(a["val_search"] == a["val"]["values"][0] for a in arms.values())  # search seed 0 comes first
    assert chosen["acc"]["n"] == 2 and arms["plain"]["seeds"] == [0, 1]
    assert all(a["seeds"] == [0] for arm, a in kd.items() if arm != chosen["arm"])
    assert set(chosen["gap_closed_per_seed"]) == {"0", "1"}
    table = hinton_table(result)
    assert "were *not* used for choosing" in table and "(chosen)" in table and table.count("| 784-30-30-10 |") == 1 + len(arms)
    assert result["targets"] == []  # the 800-800 target needs the 800-800 student


def test_target_row_is_met_only_at_the_target():
    def students(mean: float) -> dict:
        gap = {"mean": mean, "std": 0.1, "n": 3, "values": [mean] * 3}
        return {"mnist_student_800": {"chosen": {"gap_closed": gap, "temperature": 8.0, "weights": "kd1_hard0.1"}}}

    met = hinton_mnist._targets(students(hinton_mnist.TARGET_GAP), quick=False)
    missed = hinton_mnist._targets(students(hinton_mnist.TARGET_GAP - 0.01), quick=True)
    assert met[0]["met"] is True and missed[0]["met"] is False and "quick" in missed[0]["measured"]
    table = targets_table({"hinton_mnist": {"result": {"targets": missed}}})
    assert "| **no** |" in table and "74% ± 10% over 3 seeds at T=8" in table
