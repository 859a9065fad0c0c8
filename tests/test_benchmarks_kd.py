"""The ensemble and logit-loss benchmark protocols stay alive (tiny configurations; figures are not checked)."""

from __future__ import annotations

import json

import pytest

from benchmarks import _common, ensemble, logit_losses

HAS_MNIST = any((_common.MNIST_DIR / f"t10k-images-idx3-ubyte{ext}").is_file() for ext in ("", ".gz"))


def test_logit_losses_protocol_on_digits(tmp_path):
    config = {"datasets": ["digits"], "losses": ["plain", "kd", "dkd", "dist"], "seeds": [0],
              "grids": {"kd": [{"T": 4.0}], "dkd": [{"T": 4.0, "dkd_beta": 1.0}, {"T": 4.0, "dkd_beta": 8.0}],
                        "dist": [{"T": 1.0}]},
              "overrides": {"digits": {"teacher_epochs": 1, "student_epochs": 1}}}
    data = logit_losses.run(quick=True, out_dir=tmp_path, config=config)
    assert "| dkd |" in logit_losses.markdown(data)
    saved = json.loads((tmp_path / "logit_losses.json").read_text())
    losses = saved["results"]["digits"]["losses"]
    assert set(losses) == {"plain", "kd", "dkd", "dist"} and set(losses["dkd"]["candidates"]) == {
        "T=4, dkd_beta=1", "T=4, dkd_beta=8"}
    assert 0 <= losses["dkd"]["test_acc"]["mean"] <= 1 and "minus_kd" in losses["dist"]
    assert saved["machine"]["load_average"] is None or len(saved["machine"]["load_average"]) == 3


@pytest.mark.skipif(not HAS_MNIST, reason="MNIST test files absent")
def test_ensemble_protocol_end_to_end(tmp_path):
    config = {"n_train": 400, "n_test": 200, "teacher_epochs": 1, "student_epochs": 1}
    data = ensemble.run(quick=True, out_dir=tmp_path, config=config)
    assert "kd_ensemble" in ensemble.markdown(data)
    saved = json.loads((tmp_path / "ensemble.json").read_text())
    assert set(saved["arms"]) == {"plain", "kd_best_single", "kd_ensemble"} and set(saved["teachers"]) == {"0", "1", "2"}
    assert saved["best_single_teacher"] in saved["teachers"] and 0 <= saved["ensemble"]["test"] <= 1
