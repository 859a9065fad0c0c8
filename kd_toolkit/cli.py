"""The ``kd-toolkit`` console script.

* ``kd-toolkit pipeline [options]``: seed 003's one-command teacher → student → distilled-student
  pipeline (:func:`kd_toolkit.pipeline.run_pipeline`).
* ``kd-toolkit fit|validate|test|predict --config X.yaml``: Lightning's ``LightningCLI`` over any
  LightningModule and LightningDataModule given as ``class_path``/``init_args`` YAML (see ``configs/``);
  the resolved config is saved as ``config.yaml`` in the run's log directory.

Example:
    >>> args = build_parser().parse_args(["pipeline", "--data", "digits", "--alpha", "0.5"])
    >>> args.data, args.alpha, args.output_dir
    ('digits', 0.5, 'runs/pipeline')
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from kd_toolkit import __version__

__all__ = ["LIGHTNING_SUBCOMMANDS", "build_parser", "main"]

#: subcommands forwarded to ``pytorch_lightning.cli.LightningCLI``
LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")
_LIGHTNING_HELP = {
    "fit": "train a model from a YAML config (LightningCLI)",
    "validate": "run one validation epoch from a YAML config (LightningCLI)",
    "test": "run one test epoch from a YAML config (LightningCLI)",
    "predict": "predict from a YAML config (LightningCLI)",
}


# ------------------------------------------------------------------------------- argument types
def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"Expected a positive int, but got {value!r}.")
    return number


def _non_negative_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise argparse.ArgumentTypeError(f"Expected a non-negative int, but got {value!r}.")
    return number


def _float_in(high: float = math.inf, low_open: bool = True) -> Any:
    """Parser of a float in ``(0, high]`` (``[0, high]`` when not ``low_open``)."""
    kind = "a positive float" if high == math.inf else f"a float in {'(' if low_open else '['}0, {high:g}]"

    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not (math.isfinite(number) and (number > 0 if low_open else number >= 0) and number <= high):
            raise argparse.ArgumentTypeError(f"Expected {kind}, but got {value!r}.")
        return number

    return parse


def _data_spec(value: str) -> str:
    from kd_toolkit.pipeline import parse_data_spec

    try:
        parse_data_spec(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err
    return value


def _limit(value: str) -> int | float:
    if value.isdigit() and int(value) > 0:
        return int(value)
    return _float_in(1.0)(value)


# ------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: ``pipeline`` plus the LightningCLI subcommands (listed for ``--help``).

    Example:
        >>> build_parser().parse_args(["pipeline", "--epochs", "3"]).epochs
        3
    """
    parser = argparse.ArgumentParser(
        prog="kd-toolkit",
        description="Knowledge distillation, FitNets and early-exit training on PyTorch Lightning.",
        epilog="`kd-toolkit fit --help` shows every option of a LightningCLI subcommand.",
    )
    parser.add_argument("--version", action="version", version=f"kd-toolkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{pipeline,fit,validate,test,predict}")
    p = sub.add_parser(
        "pipeline", help="teacher -> regular student -> distilled student -> evaluation -> report (seed 003)",
        description="Train a teacher, a regular student and a distilled student, evaluate all three on the test "
                    "split and write models, metrics, plots and report.md. Options left out take the dataset's "
                    "defaults (kd_toolkit.pipeline.DEFAULTS).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--output-dir", default="runs/pipeline", help="where models/, results/ and report.md go")
    p.add_argument("--data", type=_data_spec, default="digits",
                   help="'digits' (embedded 8x8 digits) or 'mnist:DIR' (MNIST IDX files in DIR)")
    p.add_argument("--epochs", type=_positive_int, help="epochs of each student")
    p.add_argument("--teacher-epochs", type=_positive_int, help="epochs of the teacher")
    p.add_argument("--temperature", type=_float_in(), help="distillation temperature T")
    p.add_argument("--alpha", type=_float_in(1.0, low_open=False),
                   help="weight of the KD term (the label cross-entropy gets 1 - alpha)")
    p.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the split, weights and batch order")
    p.add_argument("--batch-size", type=_positive_int, help="batch size")
    p.add_argument("--lr", type=_float_in(), help="Adam learning rate of the students")
    p.add_argument("--teacher-lr", type=_float_in(), help="Adam learning rate of the teacher")
    p.add_argument("--teacher", help="teacher model name from the registry (kd_toolkit.models.list_models())")
    p.add_argument("--student", help="student model name from the registry")
    p.add_argument("--limit-batches", type=_limit,
                   help="train/val batches per epoch (int) or fraction (float), for quick runs")
    p.add_argument("--num-threads", type=_positive_int,
                   help="torch CPU threads during the run (default 1: fastest for these small models on a shared CPU)")
    p.add_argument("--no-progress-bar", action="store_true", help="hide Lightning's progress bars")
    p.add_argument("--no-predictions", action="store_true", help="skip results/predictions/test_predictions.csv")
    p.set_defaults(command_parser=p)
    for name in LIGHTNING_SUBCOMMANDS:  # listed for --help; the arguments are LightningCLI's
        sub.add_parser(name, help=_LIGHTNING_HELP[name], add_help=False)
    return parser


# --------------------------------------------------------------------------------------- main
def _run_lightning_cli(argv: list[str]) -> int:
    import pytorch_lightning as pl
    from pytorch_lightning.cli import LightningCLI

    # LightningCLI reads sys.argv (and warns when it also gets `args=`): run it as if from the command line.
    saved = sys.argv
    sys.argv = ["kd-toolkit", *argv]
    try:
        with warnings.catch_warnings():
            # Lightning's own calls into jsonargparse raise deprecation warnings a user can do nothing about.
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"pytorch_lightning\.cli")
            LightningCLI(pl.LightningModule, pl.LightningDataModule, subclass_mode_model=True,
                         subclass_mode_data=True, save_config_kwargs={"overwrite": True},
                         parser_kwargs={"prog": "kd-toolkit"})
    finally:
        sys.argv = saved
    return 0


def _run_pipeline_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from kd_toolkit.pipeline import resolve_config, run_pipeline

    names = ("epochs", "teacher_epochs", "temperature", "alpha", "seed", "batch_size", "lr", "teacher_lr", "teacher",
             "student", "limit_batches", "num_threads")
    options = {name: getattr(args, name) for name in names}
    try:  # every argument is checked before any training starts
        resolve_config(args.data, **options)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    run_pipeline(args.output_dir, args.data, progress_bar=not args.no_progress_bar,
                 save_predictions=not args.no_predictions, **options)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``kd-toolkit``; returns the exit status (argument errors exit with status 2).

    Args:
        argv: the arguments (default ``sys.argv[1:]``), e.g. ``["pipeline", "--epochs", "5"]`` or
            ``["fit", "--config", "configs/teacher_digits.yaml"]``.

    Example:
        >>> main(["pipeline", "--epochs", "0"])  # doctest: +SKIP
        usage: kd-toolkit pipeline [-h] ...
        kd-toolkit pipeline: error: argument --epochs: Expected a positive int, but got '0'.
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] in LIGHTNING_SUBCOMMANDS:
        return _run_lightning_cli(args_list)
    parser = build_parser()
    args = parser.parse_args(args_list)
    if args.command is None:
        parser.print_help()
        return 2
    return _run_pipeline_command(args.command_parser, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
