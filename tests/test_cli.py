"""The ``kd-toolkit`` console script: help, version, pipeline argument errors, and every YAML in ``configs/``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kd_toolkit import __version__
from kd_toolkit.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
MNIST_DIR = REPO.parent / "shared" / "data" / "mnist-test"


def _data_dir(config: Path) -> str | None:
    """The `data.init_args.data_dir` of a config, if any (resolved against the repository root)."""
    data = (yaml.safe_load(config.read_text()) or {}).get("data") or {}
    return (data.get("init_args") or {}).get("data_dir")


# ------------------------------------------------------------------------------------ top level
def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in ("pipeline", "fit", "validate", "test", "predict"):
        assert name in out


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"kd-toolkit {__version__}"


def test_no_subcommand_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage: kd-toolkit" in capsys.readouterr().out


def test_unknown_subcommand_fails(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["distill"])
    assert exc.value.code == 2
    assert "invalid choice: 'distill'" in capsys.readouterr().err


def test_pipeline_help_lists_the_options(capsys):
    with pytest.raises(SystemExit):
        main(["pipeline", "--help"])
    out = capsys.readouterr().out
    for option in ("--output-dir", "--data", "--epochs", "--teacher-epochs", "--temperature", "--alpha", "--seed",
                   "--batch-size", "--lr", "--teacher", "--student"):
        assert option in out


def test_console_script_entry_point():
    script = Path(sys.executable).parent / "kd-toolkit"
    if not script.exists():
        pytest.skip("the kd-toolkit console script is not installed in this environment")
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == f"kd-toolkit {__version__}"


def test_parser_defaults():
    args = build_parser().parse_args(["pipeline"])
    assert (args.output_dir, args.data, args.seed, args.epochs, args.alpha) == ("runs/pipeline", "digits", 0, None, None)


# ------------------------------------------------------------------------------ pipeline errors
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--data", "cifar"], "argument --data: Expected `--data` to be 'digits' or 'mnist:DIR', but got 'cifar'."),
        (["--data", "mnist:"], "Expected `--data` to be 'digits' or 'mnist:DIR', but got 'mnist:'."),
        (["--epochs", "0"], "argument --epochs: Expected a positive int, but got '0'."),
        (["--teacher-epochs", "two"], "argument --teacher-epochs: Expected a positive int, but got 'two'."),
        (["--temperature", "0"], "argument --temperature: Expected a positive float, but got '0'."),
        (["--alpha", "1.5"], r"argument --alpha: Expected a float in [0, 1], but got '1.5'."),
        (["--lr", "nan"], "argument --lr: Expected a positive float, but got 'nan'."),
        (["--seed", "-1"], "argument --seed: Expected a non-negative int, but got '-1'."),
        (["--batch-size", "0"], "argument --batch-size: Expected a positive int, but got '0'."),
        (["--limit-batches", "1.5"], r"argument --limit-batches: Expected a float in (0, 1], but got '1.5'."),
        (["--student", "resnet9000"], "Expected `student` to be one of ["),
        (["--data", "mnist:/no/such/dir"], "does not exist"),
    ],
)
def test_pipeline_argument_errors(capsys, tmp_path, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(["pipeline", "--output-dir", str(tmp_path / "out"), *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage: kd-toolkit pipeline" in err and message in err
    assert not (tmp_path / "out").exists()  # nothing ran


def test_pipeline_rejects_a_model_made_for_other_inputs(tmp_path):
    """A registry model that cannot take the dataset's inputs fails before training, naming the fix."""
    from kd_toolkit.pipeline import run_pipeline

    with pytest.raises(ValueError, match=r"Model 'mnist_student_30' does not accept inputs of shape \(1, 1, 8, 8\)"):
        run_pipeline(tmp_path, student="mnist_student_30", progress_bar=False, print_results=False)
    assert not (tmp_path / "lightning_logs").exists()  # failed before the teacher trained


# ------------------------------------------------------------------------------ LightningCLI
def test_configs_folder_has_the_digits_configs():
    names = {p.name for p in CONFIGS}
    assert {"teacher_digits.yaml", "distill_digits.yaml"} <= names


@pytest.mark.parametrize("config", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_config_runs_one_fast_dev_batch(config, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # configs name paths such as ../shared/data/... relative to the repository root
    data_dir = _data_dir(config)
    if data_dir and not (REPO / data_dir).exists():
        pytest.skip(f"{config.name} needs the data folder {data_dir!r} (resolved from {REPO}), which is absent")
    assert main(["fit", "--config", str(config), "--trainer.fast_dev_run=true",
                 f"--trainer.default_root_dir={tmp_path}", "--trainer.accelerator=cpu"]) == 0


def test_fit_saves_the_resolved_config_beside_the_run(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    main(["fit", "--config", "configs/teacher_digits.yaml", "--trainer.max_epochs=1",
          "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1", "--trainer.accelerator=cpu",
          "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}",
          f"--trainer.logger.init_args.save_dir={tmp_path}"])
    run = tmp_path / "teacher_digits" / "version_0"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["class_path"] == "kd_toolkit.distillation.DistillationModule"
    assert saved["trainer"]["max_epochs"] == 1
    assert (run / "metrics.csv").is_file()
    checkpoint = next((run / "checkpoints").glob("best-*.ckpt"))

    # the distillation config loads that teacher through `teacher_checkpoint`, then tests
    assert main(["fit", "--config", "configs/distill_digits.yaml", "--trainer.fast_dev_run=true",
                 "--trainer.accelerator=cpu", f"--trainer.default_root_dir={tmp_path}",
                 f"--model.init_args.teacher_checkpoint={checkpoint}"]) == 0


def test_lightning_subcommand_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--help"])
    assert exc.value.code == 0
    assert "--config" in capsys.readouterr().out


def test_bad_config_key_is_rejected(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", "configs/teacher_digits.yaml", "--model.init_args.temprature=3",
              f"--trainer.default_root_dir={tmp_path}"])
    assert exc.value.code != 0
    assert "temprature" in capsys.readouterr().err
