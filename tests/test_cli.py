"""The ``kd-toolkit`` console script: help, version, pipeline argument errors, and every YAML in ``configs/``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kd_toolkit import __version__
from kd_toolkit.cli import build_parser, main, user_error_message
from kd_toolkit.pipeline import DEFAULT_NUM_THREADS, DEFAULTS, default_output_dir

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
    assert (args.output_dir, args.data, args.seed, args.epochs, args.alpha) == (None, "digits", 0, None, None)
    assert args.num_threads == DEFAULT_NUM_THREADS == 1


def test_pipeline_help_shows_real_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["pipeline", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps the help text
    assert "None" not in out
    assert f"(default: {DEFAULTS['digits']['epochs']} on digits, {DEFAULTS['mnist']['epochs']} on mnist)" in out
    assert "default: runs/pipeline for digits, runs/pipeline_mnist for mnist:DIR" in out
    assert "--num-threads NUM_THREADS torch CPU threads" in out and "(default: 1)" in out


def test_one_output_folder_per_data_set():
    """`kd-toolkit pipeline --data mnist:...` must not overwrite the digits run that distill_digits.yaml loads."""
    assert default_output_dir("digits") == Path("runs/pipeline")
    assert default_output_dir("mnist:../shared/data/mnist-test") == Path("runs/pipeline_mnist")


def test_lightning_help_shows_the_thread_default(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--num_threads NUM_THREADS, --num-threads NUM_THREADS" in out and "default: 1)" in out
    for option, value in (("limit_val_batches", "1.0"), ("log_every_n_steps", "50"), ("enable_progress_bar", "True")):
        section = out.split(f"--trainer.{option} ", 2)[-1].split("--trainer.", 1)[0]
        assert f"default: {value}" in section, section


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


# ---------------------------------------------------------------- errors: one or two lines, exit 2
DISTILL = ["fit", "--config", "configs/distill_digits.yaml", "--trainer.accelerator=cpu"]
EARLY_EXIT = ["fit", "--config", "configs/early_exit_digits.yaml", "--trainer.accelerator=cpu"]


def _short_error(err: str, message: str) -> None:
    lines = [line for line in err.splitlines() if line.strip() and "Seed set to" not in line]
    assert "Traceback" not in err
    assert len(lines) <= 3, lines
    assert message in lines[0] and "--debug" in lines[-1]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([*DISTILL, "--model.init_args.temperature=-1"],
         "kd-toolkit fit: error: Expected `temperature` to be a positive float, but got -1.0."),
        ([*DISTILL, '--model.init_args.loss_weights={"kd_los": 1.0}'],
         "Unknown loss-weight key 'kd_los' in `loss_weights`"),
        ([*EARLY_EXIT, "--model.init_args.network.init_args.thresholds=[0.9]"], "Expected `thresholds` to be 2"),
        (["test", "--config", "configs/distill_digits.yaml", "--trainer.accelerator=cpu", "--ckpt_path",
          "missing.ckpt"], "kd-toolkit test: error: "),
    ],
    ids=["negative-temperature", "loss-weight-key", "thresholds-length", "missing-ckpt"],
)
def test_lightning_cli_check_errors_are_short(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    assert main([*argv, f"--trainer.default_root_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    _short_error(err, message)
    if "missing.ckpt" in argv:
        assert "missing.ckpt" in err and "not found" in err


def test_debug_flag_and_environment_variable_keep_the_traceback(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    argv = [*DISTILL, "--model.init_args.temperature=-1", f"--trainer.default_root_dir={tmp_path}"]
    with pytest.raises(ValueError, match="Union subtypes") as exc:
        main([*argv, "--debug"])
    assert "Expected `temperature` to be a positive float" in str(exc.value.__cause__)
    monkeypatch.setenv("KD_TOOLKIT_DEBUG", "1")
    with pytest.raises(ValueError):
        main(argv)


def test_cli_error_as_a_subprocess(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("KD_TOOLKIT_DEBUG", None)
    result = subprocess.run([sys.executable, "-m", "kd_toolkit.cli", *DISTILL, "--model.init_args.temperature=0",
                             f"--trainer.default_root_dir={tmp_path}"], capture_output=True, text=True, timeout=300,
                            cwd=REPO, env=env)
    assert result.returncode == 2
    _short_error(result.stderr, "Expected `temperature` to be a positive float, but got 0.0.")


def test_user_error_message_leaves_real_bugs_alone():
    try:
        raise KeyError("a bug")
    except KeyError as err:
        assert user_error_message(err) is None
    assert user_error_message(FileNotFoundError("Checkpoint file not found: x.ckpt")) == \
        "Checkpoint file not found: x.ckpt"


def test_lightning_cli_restores_torch_threads(tmp_path, monkeypatch):
    import torch

    monkeypatch.chdir(REPO)
    before = torch.get_num_threads()
    assert main(["fit", "--config", "configs/teacher_digits.yaml", "--trainer.fast_dev_run=true",
                 "--trainer.accelerator=cpu", f"--trainer.default_root_dir={tmp_path}", "--num-threads", "2"]) == 0
    assert torch.get_num_threads() == before


def test_progress_bar_hides_v_num(tmp_path):
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import TQDMProgressBar
    from pytorch_lightning.loggers import CSVLogger

    from kd_toolkit.core.progress import MetricsProgressBar
    from kd_toolkit.data import DigitsDataModule
    from kd_toolkit.distillation import DistillationModule
    from kd_toolkit.models import create_model

    bar = MetricsProgressBar()
    module = DistillationModule(student=create_model("digits_student"))
    trainer = pl.Trainer(logger=CSVLogger(tmp_path, version="version_0"), callbacks=[bar], max_epochs=1,
                         limit_train_batches=1, enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(module, datamodule=DigitsDataModule())
    assert TQDMProgressBar.get_metrics(bar, trainer, module).get("v_num") == "on_0"  # what Lightning would show
    assert "v_num" not in bar.get_metrics(trainer, module)
