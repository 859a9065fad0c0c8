"""The issue-13 benchmark protocols stay alive (tiny configurations; figures are not checked), the suite runs and
renders them, and a published run rewrites the FitNets and early-exit README sections."""

from __future__ import annotations

import inspect
import json

import pytest

from benchmarks import _common, early_exit, early_exit_teacher, ensemble, fitnets, logit_losses
from benchmarks.__main__ import EXTERNAL, PROTOCOLS, main
from benchmarks.report import EARLY_EXIT_END, EARLY_EXIT_START, publish_sections, render, update_marked

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
    assert set(saved["arms"]) == {"plain", "kd_single", "kd_ensemble"} and set(saved["teachers"]) == {"0", "1", "2"}
    assert saved["best_single_teacher_on_test"] in saved["teachers"] and 0 <= saved["ensemble"]["test"] <= 1
    assert {r["target"] for r in saved["targets"]} == {
        "ensemble-distilled 800-800 student beats kd_single (MNIST, mean of seeds)",
        "ensemble-distilled 800-800 student beats plain (MNIST, mean of seeds)"}


@pytest.mark.skipif(not HAS_MNIST, reason="MNIST test files absent")
def test_selection_trains_the_choice_for_the_other_seeds_and_shares_identical_runs(tmp_path):
    tiny = {"n_train": 300, "n_test": 100}
    data = ensemble.run(quick=True, out_dir=tmp_path, config={
        **tiny, "student_seeds": [0, 1], "select_seeds": [0], "temperatures": [2, 4], "teacher_epochs": 1,
        "student_epochs": 1})
    single = data["arms"]["kd_single"]
    assert single["selection_seeds"] == [0] and set(single["candidates"]) == {"T=2", "T=4"}
    assert set(single["per_seed_test"]) == {0, 1} and single["test_acc"]["n"] == 2
    losses = logit_losses.run(quick=True, out_dir=tmp_path, config={
        **tiny, "seeds": [0, 1], "datasets": ["mnist"], "losses": ["plain", "kd"], "grids": {"kd": [
            {"T": 2.0}, {"T": 4.0}]}, "overrides": {"mnist": {"teacher_epochs": 1, "student_epochs": 1}}})
    # the same teachers, data, seeds and settings: logit_losses's plain and kd are ensemble's plain and kd_single
    got = losses["results"]["mnist"]["losses"]
    assert got["plain"]["per_seed_test"] == data["arms"]["plain"]["per_seed_test"]
    assert got["kd"]["per_seed_test"] == single["per_seed_test"] and got["kd"]["chosen"] == single["chosen"]


@pytest.mark.skipif(not HAS_MNIST, reason="MNIST test files absent")
def test_early_exit_teacher_protocol_end_to_end(tmp_path):
    config = {"n_train": 600, "n_test": 200, "val": 200, "teacher_epochs": 1}
    data = early_exit_teacher.run(quick=True, out_dir=tmp_path, config=config)
    saved = json.loads((tmp_path / "early_exit_teacher.json").read_text())
    assert set(saved["summary"]) == set(early_exit_teacher.ARMS) and len(saved["targets"]) == 2
    assert all(0 <= s["exit_0_share"]["mean"] <= 1 for s in saved["summary"].values())
    assert "| teacher |" in early_exit_teacher.markdown(data) and "load_average_end" in saved


def test_the_suite_registers_the_new_protocols_after_protocol_1():
    names = list(PROTOCOLS)
    for name in ("ensemble", "logit_losses", "early_exit_teacher", "cache_scaling", "export"):
        assert names.index("hinton_mnist") < names.index(name), name  # they reuse protocol 1's teachers
        module = __import__(PROTOCOLS[name], fromlist=["run"])
        params = inspect.signature(module.run).parameters
        assert {"quick", "out_dir", "threads"} <= set(params) and callable(module.markdown), name
    assert names.index("ensemble") < names.index("logit_losses")  # logit_losses reuses ensemble's runs


def test_quick_suite_renders_a_new_protocol_as_its_own_section(tmp_path):
    assert main(["--suite", "quick", "--only", "cache_scaling", "--out-dir", str(tmp_path)]) == 0
    text = (tmp_path / "quick.md").read_text()
    assert "### Teacher-output cache scaling" in text and "| synthetic_1000 | 50 | 4 |" in text
    summary = json.loads((tmp_path / "summary-quick.json").read_text())
    assert summary["protocols"]["cache_scaling"]["status"] == "ok" and (tmp_path / "cache_scaling.json").is_file()


def test_report_shows_each_protocols_section_and_its_target_rows(tmp_path):
    config = {"datasets": ["digits"], "losses": ["plain", "kd", "dist"], "seeds": [0],
              "grids": {"kd": [{"T": 4.0}], "dist": [{"T": 1.0}]},
              "overrides": {"digits": {"teacher_epochs": 1, "student_epochs": 1}}}
    entry = {"status": "ok", "module": "benchmarks.logit_losses", "seconds": 1.0,
             "result": logit_losses.run(quick=True, out_dir=tmp_path, config=config)}
    summary = {"suite": "quick", "command": "python -m benchmarks --only logit_losses", "threads": 1,
               "machine": _common.machine_info(), "load_average_end": None, "seconds": 1.0, "protocols": {
                   "logit_losses": entry,
                   "early_exit": {"status": "ok", "module": "benchmarks.early_exit", "external": True, "seconds": 1.0,
                                  "result_file": str(tmp_path / "early_exit.json")},
                   "export": {"status": "ok", "module": "benchmarks.export", "seconds": 1.0,
                              "result": {"targets": {"0%": 0.15}}}}}  # not the contract's rows: ignored
    text = render(summary)
    assert "### Modern logit losses (LS-KD, DKD, DIST) against plain KD" in text and "| dist |" in text
    assert "| dist beats plain KD (digits, mean of seeds) |" in text
    assert "### Early exit" not in text and "`early_exit`: ok" in text  # its README section is its own
    assert "**could not render** this result (KeyError" in text  # the export stand-in: reported, not fatal


@pytest.mark.skipif(not HAS_MNIST, reason="MNIST test files absent (the quick runs read them)")
def test_published_run_rewrites_the_fitnets_and_early_exit_sections(tmp_path):
    results = tmp_path / "results"  # this checkout's own quick results, in the current format
    early_exit.run(quick=True, out_dir=results)
    fitnets.run(quick=True, out_dir=results)
    readme = tmp_path / "README.md"
    readme.write_text("# B\n\n<!-- kd-bench:start -->\nours\n<!-- kd-bench:end -->\n\n## Early exit\n\nProse before."
                      f"\n\n{EARLY_EXIT_START}\nold table\n{EARLY_EXIT_END}\n\nProse after.\n\n## FitNets\n\nold\n")
    protocols = {name: {"status": "ok", "external": True, "result_file": str(results / f"{name}.json")}
                 for name in EXTERNAL}
    assert publish_sections(readme, {"protocols": protocols}) == ["fitnets", "early_exit"]
    text = readme.read_text()
    assert "old table" not in text and "Prose before." in text and "Prose after." in text and "ours" in text
    assert "| Test accuracy: final exit / early exit |" in text.split(EARLY_EXIT_START)[1].split(EARLY_EXIT_END)[0]
    assert "\nold\n" not in text.split("## FitNets")[1] and text.count("## FitNets") == 1
    protocols["fitnets"]["status"] = "failed"  # a failed protocol keeps its old section
    assert publish_sections(readme, {"protocols": protocols}) == ["early_exit"]
    update_marked(readme, "<!-- x:start -->", "<!-- x:end -->", "new body", "## Early exit")
    text = readme.read_text()
    assert text.index("new body") < text.index("## FitNets") and text.index("Prose after.") < text.index("new body")


def test_the_suite_runs_its_lanes_in_parallel_processes_then_the_rest_alone(tmp_path, monkeypatch):
    from benchmarks import _suite

    monkeypatch.setattr(_suite, "LANES", (("torchdistill",), ("cache_scaling",)))
    assert _suite.schedule(["cache_scaling", "export", "torchdistill"], jobs=2) == {
        "jobs": 2, "lanes": [["torchdistill"], ["cache_scaling"]], "alone": ["export"]}
    assert _suite.schedule(["cache_scaling", "torchdistill"], jobs=1)["lanes"] == []  # --jobs 1: one by one
    assert _suite.schedule(["cache_scaling", "torchdistill"], jobs=8)["jobs"] == 2  # no more workers than lanes
    assert main(["--suite", "quick", "--only", "cache_scaling,torchdistill", "--out-dir", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary-quick.json").read_text())
    assert summary["schedule"]["lanes"] == [["torchdistill"], ["cache_scaling"]]
    assert list(summary["protocols"]) == ["torchdistill", "cache_scaling"]  # reported in PROTOCOLS order
    assert summary["protocols"]["cache_scaling"]["status"] == "ok" and (tmp_path / "cache_scaling.json").is_file()
    assert "in parallel, one process" in (tmp_path / "quick.md").read_text()
    with pytest.raises(SystemExit):
        main(["--suite", "quick", "--jobs", "0"])


@pytest.mark.skipif(not HAS_MNIST, reason="MNIST test files absent")
def test_a_teacher_in_the_shared_folder_is_trained_once_and_loaded_bit_identical(tmp_path, monkeypatch):
    import torch

    from benchmarks import _mnist

    monkeypatch.setenv(_mnist.TEACHER_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(_mnist, "_TEACHERS", {})
    split, _ = _mnist.hinton_split(200, 100)
    trained, info = _mnist.teacher_for(split, 0, 1)
    assert len(list(tmp_path.glob("mnist_teacher-*.pt"))) == 1 and "loaded_from_shared_folder" not in info
    monkeypatch.setattr(_mnist, "_TEACHERS", {})  # another process: its memo is empty
    loaded, again = _mnist.teacher_for(split, 0, 1)
    assert loaded is not trained and again["loaded_from_shared_folder"] and again["acc"] == info["acc"]
    assert not loaded.training
    for (name, a), (_, b) in zip(trained.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
