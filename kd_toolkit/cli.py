"""The ``kd-toolkit`` console script.

* ``kd-toolkit pipeline [options]``: seed 003's one-command teacher → student → distilled-student
  pipeline (:func:`kd_toolkit.pipeline.run_pipeline`).
* ``kd-toolkit fit|validate|test|predict --config X.yaml``: Lightning's ``LightningCLI`` over any
  LightningModule and LightningDataModule given as ``class_path``/``init_args`` YAML (see ``configs/``);
  the resolved config is saved as ``config.yaml`` in the run's log directory.

Both use :data:`kd_toolkit.pipeline.DEFAULT_NUM_THREADS` torch CPU threads (1) unless told otherwise
(``--num-threads N``). An error raised by a kd_toolkit check (a bad argument in a config, a missing file)
is printed in one or two lines with exit status 2; ``--debug`` (or ``KD_TOOLKIT_DEBUG=1``) shows the full
traceback instead.

Example:
    >>> args = build_parser().parse_args(["pipeline", "--data", "digits", "--alpha", "0.5"])
    >>> args.data, args.alpha, args.output_dir  # output_dir None: runs/pipeline for digits
    ('digits', 0.5, None)
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kd_toolkit import __version__

__all__ = ["LIGHTNING_SUBCOMMANDS", "build_parser", "main", "user_error_message"]

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
class _DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` where an option has a real default; options whose default depends on the data
    set say so in their help text instead of showing ``None``."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not any(action.default is v for v in (None, False, argparse.SUPPRESS)) and "default" not in text:
            text += " (default: %(default)s)"
        return text


def _per_data(key: str) -> str:
    from kd_toolkit.pipeline import DEFAULTS

    digits, mnist = DEFAULTS["digits"][key], DEFAULTS["mnist"][key]
    return f"(default: {digits})" if digits == mnist else f"(default: {digits} on digits, {mnist} on mnist)"


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: ``pipeline`` plus the LightningCLI subcommands (listed for ``--help``).

    Example:
        >>> build_parser().parse_args(["pipeline", "--epochs", "3"]).epochs
        3
    """
    from kd_toolkit.pipeline import DEFAULT_NUM_THREADS

    parser = argparse.ArgumentParser(
        prog="kd-toolkit",
        description="Knowledge distillation, FitNets and early-exit training on PyTorch Lightning.",
        epilog="`kd-toolkit fit --help` shows every option of a LightningCLI subcommand. Errors are printed in one "
               "or two lines; add --debug (or set KD_TOOLKIT_DEBUG=1) for the full traceback.",
    )
    parser.add_argument("--version", action="version", version=f"kd-toolkit {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="{pipeline,fit,validate,test,predict}")
    p = sub.add_parser(
        "pipeline", help="teacher -> regular student -> distilled student -> evaluation -> report (seed 003)",
        description="Train a teacher, a regular student and a distilled student, evaluate all three on the test "
                    "split and write models (models/*.pt for load_pipeline_model, models/*.pth bare state dicts "
                    "as seed 003 saved them), metrics, plots and report.md. Options left out take the dataset's "
                    "defaults (kd_toolkit.pipeline.DEFAULTS).",
        formatter_class=_DefaultsHelpFormatter,
    )
    p.add_argument("--output-dir", help="where models/, results/ and report.md go (default: runs/pipeline for "
                                        "digits, runs/pipeline_mnist for mnist:DIR)")
    p.add_argument("--data", type=_data_spec, default="digits",
                   help="'digits' (embedded 8x8 digits) or 'mnist:DIR' (MNIST IDX files in DIR)")
    p.add_argument("--epochs", type=_positive_int, help=f"epochs of each student {_per_data('epochs')}")
    p.add_argument("--teacher-epochs", type=_positive_int,
                   help=f"epochs of the teacher {_per_data('teacher_epochs')}")
    p.add_argument("--temperature", type=_float_in(), help=f"distillation temperature T {_per_data('temperature')}")
    p.add_argument("--alpha", type=_float_in(1.0, low_open=False),
                   help="weight of the label cross-entropy; the KD term gets 1 - alpha, as seed 003's ALPHA "
                        f"{_per_data('alpha')}")
    p.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the split, weights and batch order")
    p.add_argument("--batch-size", type=_positive_int, help=f"batch size {_per_data('batch_size')}")
    p.add_argument("--lr", type=_float_in(), help=f"Adam learning rate of the students {_per_data('lr')}")
    p.add_argument("--teacher-lr", type=_float_in(),
                   help=f"Adam learning rate of the teacher {_per_data('teacher_lr')}")
    p.add_argument("--teacher", help="teacher model name from the registry (kd_toolkit.models.list_models()) "
                                     f"{_per_data('teacher')}")
    p.add_argument("--student", help=f"student model name from the registry {_per_data('student')}")
    p.add_argument("--limit-batches", type=_limit,
                   help="train/val batches per epoch (int) or fraction (float), for quick runs (default: all)")
    p.add_argument("--num-threads", type=_positive_int, default=DEFAULT_NUM_THREADS,
                   help="torch CPU threads during the run (1 is fastest for these small models on a shared CPU)")
    p.add_argument("--no-progress-bar", action="store_true", help="hide Lightning's progress bars")
    p.add_argument("--no-predictions", action="store_true", help="skip results/predictions/test_predictions.csv")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    p.set_defaults(command_parser=p)
    for name in LIGHTNING_SUBCOMMANDS:  # listed for --help; the arguments are LightningCLI's
        sub.add_parser(name, help=_LIGHTNING_HELP[name], add_help=False)
    return parser


# --------------------------------------------------------------------------------------- main
def _lightning_cli_class() -> type:
    """``LightningCLI`` with ``--num_threads`` (default :data:`~kd_toolkit.pipeline.DEFAULT_NUM_THREADS`, shown in
    ``--help``) and the progress bar without ``v_num``."""
    import torch
    from jsonargparse.typing import PositiveInt
    from pytorch_lightning.callbacks import ProgressBar
    from pytorch_lightning.cli import LightningCLI

    from kd_toolkit.core.progress import MetricsProgressBar
    from kd_toolkit.pipeline import DEFAULT_NUM_THREADS

    class KDLightningCLI(LightningCLI):
        def add_arguments_to_parser(self, parser: Any) -> None:
            parser.add_argument("--num_threads", "--num-threads", type=PositiveInt, default=DEFAULT_NUM_THREADS,
                                help="torch CPU threads (1 is fastest for small models on a shared CPU; "
                                     "the pipeline's default too)")

        def before_instantiate_classes(self) -> None:
            config = self.config[self.subcommand] if self.subcommand else self.config
            torch.set_num_threads(int(config["num_threads"]))

        def instantiate_trainer(self, **kwargs: Any) -> Any:
            trainer_config = (self.config_init[self.subcommand] if self.subcommand else self.config_init)["trainer"]
            configured = trainer_config.get("callbacks") or []
            configured = configured if isinstance(configured, list) else [configured]
            if trainer_config.get("enable_progress_bar") is not False and "callbacks" not in kwargs and not any(
                    isinstance(c, ProgressBar) for c in configured):
                kwargs["callbacks"] = [*configured, MetricsProgressBar()]
            return super().instantiate_trainer(**kwargs)

    return KDLightningCLI


#: Trainer options whose default ``None`` stands for one fixed value: that value, so that ``--help`` shows it
#: (behaviour unchanged; options where ``None`` means "unset", e.g. ``max_epochs`` with ``max_steps``, stay).
TRAINER_HELP_DEFAULTS = {
    "limit_train_batches": 1.0, "limit_val_batches": 1.0, "limit_test_batches": 1.0, "limit_predict_batches": 1.0,
    "val_check_interval": 1.0, "check_val_every_n_epoch": 1, "num_sanity_val_steps": 2, "log_every_n_steps": 50,
    "enable_checkpointing": True, "enable_progress_bar": True, "enable_model_summary": True,
}


def _run_lightning_cli(argv: list[str]) -> int:
    import pytorch_lightning as pl
    import torch

    # LightningCLI reads sys.argv (and warns when it also gets `args=`): run it as if from the command line.
    saved, threads = sys.argv, torch.get_num_threads()
    sys.argv = ["kd-toolkit", *argv]
    try:
        with warnings.catch_warnings():
            # Lightning's own calls into jsonargparse raise deprecation warnings a user can do nothing about.
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"pytorch_lightning\.cli")
            _lightning_cli_class()(pl.LightningModule, pl.LightningDataModule, subclass_mode_model=True,
                                   subclass_mode_data=True, save_config_kwargs={"overwrite": True},
                                   trainer_defaults=dict(TRAINER_HELP_DEFAULTS),
                                   parser_kwargs={"prog": "kd-toolkit"})
    finally:
        sys.argv = saved
        torch.set_num_threads(threads)
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


_PACKAGE_DIR = Path(__file__).resolve().parent
_USER_ERRORS = (ValueError, TypeError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def _raised_by_kd_toolkit(err: BaseException) -> bool:
    """The innermost frame of ``err`` lies in kd_toolkit (a check of ours), not in this file."""
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return False
    where = Path(frames[-1].filename).resolve()
    return _PACKAGE_DIR in where.parents and where != Path(__file__).resolve()


def user_error_message(err: BaseException) -> str | None:
    """The message to show for ``err`` in place of a traceback, or ``None`` for a real bug.

    Follows the chain of causes (jsonargparse and Lightning wrap what a constructor raises) to the innermost
    kd_toolkit check (``ValueError``/``TypeError``/``FileNotFoundError`` raised in kd_toolkit code), else to a
    missing or unreadable file wherever it was found missing; the first two lines of its message.

    Example:
        >>> from kd_toolkit._checks import check_int
        >>> try:
        ...     try:
        ...         check_int("k", -1, minimum=0)
        ...     except ValueError as inner:
        ...         raise ValueError("Does not validate against any of the Union subtypes") from inner
        ... except ValueError as err:
        ...     user_error_message(err)
        'Expected `k` to be a non-negative int, but got -1.'
    """
    chain: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    found = next((e for e in reversed(chain) if isinstance(e, _USER_ERRORS) and _raised_by_kd_toolkit(e)), None)
    if found is None:
        found = next((e for e in reversed(chain) if isinstance(e, _USER_ERRORS[2:])), None)
    if found is None:
        return None
    lines = [line for line in str(found).strip().splitlines() if line.strip()] or [type(found).__name__]
    return "\n".join(lines[:2])


def _debug_requested(args_list: list[str]) -> bool:
    """``--debug`` anywhere in the arguments (removed from them), or ``KD_TOOLKIT_DEBUG`` set and not 0."""
    flag = "--debug" in args_list
    while "--debug" in args_list:
        args_list.remove("--debug")
    return flag or os.environ.get("KD_TOOLKIT_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``kd-toolkit``; returns the exit status (argument and check errors exit with status 2).

    Args:
        argv: the arguments (default ``sys.argv[1:]``), e.g. ``["pipeline", "--epochs", "5"]`` or
            ``["fit", "--config", "configs/teacher_digits.yaml"]``.

    Example:
        >>> main(["pipeline", "--epochs", "0"])  # doctest: +SKIP
        usage: kd-toolkit pipeline [-h] ...
        kd-toolkit pipeline: error: argument --epochs: Expected a positive int, but got '0'.
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_requested(args_list)
    command = args_list[0] if args_list and not args_list[0].startswith("-") else ""
    try:
        return _dispatch(args_list)
    except Exception as err:
        message = None if debug else user_error_message(err)
        if message is None:
            raise
        print(f"kd-toolkit {command}: error: {message}".replace("  ", " "), file=sys.stderr)
        print("(run again with --debug, or KD_TOOLKIT_DEBUG=1, for the full traceback)", file=sys.stderr)
        return 2


def _dispatch(args_list: list[str]) -> int:
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
