"""Logger factory: Comet (info file, offline fallback), TensorBoard and CSV.

One call, :func:`build_loggers`, gives the loggers of a run; their files sit together::

    save_dir/<name>/version_<n>/
        metrics.csv, hparams.yaml          CSVLogger (csv=True)
        tensorboard/events.out.tfevents.*  TensorBoardLogger (tensorboard=True)
        comet/<experiment_key>-<rand>.zip  Comet offline archive (when Comet runs offline)
        checkpoints/                       Lightning's ModelCheckpoint (first logger's folder)

Comet reads the seed-002 info file (API key, project, workspace) and runs online only when the
server answers and accepts the key; otherwise it uses Comet's real offline mode, with one
``UserWarning``, and never waits the ~33 s Comet spends retrying a bad key.
"""

from __future__ import annotations

import csv
import os
import warnings
from argparse import Namespace
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import CSVLogger as LightningCSVLogger
from pytorch_lightning.loggers import Logger, TensorBoardLogger

from kd_toolkit.tracking.comet import CometInfo, build_comet_logger, comet_server_reachable, read_comet_info

__all__ = [
    "CometInfo", "read_comet_info", "comet_server_reachable", "build_comet_logger", "build_loggers", "log_hyperparams"
]

_PRIMITIVES = (bool, int, float, str)


class CSVLogger(LightningCSVLogger):
    """Lightning's ``CSVLogger`` that, in a run folder which already has a ``metrics.csv`` (a resumed run),
    continues it instead of deleting it: the earlier rows are kept, then the new ones follow."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        path = Path(self.log_dir) / "metrics.csv"
        self._previous_rows: list[dict[str, str]] = []
        if path.is_file():
            with open(path, newline="", encoding="utf-8") as handle:
                self._previous_rows = [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(handle)]

    @property
    def experiment(self) -> Any:
        with warnings.catch_warnings():  # "... will be deleted": not so, the rows are kept below
            warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")
            writer = super().experiment  # Lightning's writer removes the old file here ...
        if self._previous_rows:  # ... so its rows go first into what the writer saves next
            writer.metrics[:0] = self._previous_rows
            self._previous_rows = []
        return writer


def _resolve_version(root: Path, version: int | str | None) -> str:
    """The run folder name: ``version`` as given, or the next free ``version_<n>`` under ``root``."""
    if version is None:
        taken = [int(p.name[8:]) for p in root.glob("version_*") if p.is_dir() and p.name[8:].isdigit()]
        version = max(taken, default=-1) + 1
    if isinstance(version, str) and version:
        return version
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValueError(f"Expected `version` to be a non-negative int or a non-empty str, but got {version!r}.")
    return f"version_{version}"


def build_loggers(
    save_dir: str | os.PathLike[str],
    name: str = "kd",
    *,
    csv: bool = True,
    tensorboard: bool = False,
    comet_info_path: str | os.PathLike[str] | None = None,
    comet_exp_name: str | None = None,
    comet_online: bool | None = None,
    extra: Iterable[Logger] | None = None,
    version: int | str | None = None,
) -> list[Logger]:
    """Build the loggers of one run, all writing under ``save_dir/name/version_<n>/`` (see the module docstring).

    The version is chosen once (the next free ``version_<n>`` unless given) and shared. The Comet
    info file is read first, so its errors surface before anything is created.

    Args:
        save_dir: root folder of all runs.
        name: run family name (a folder under ``save_dir``).
        csv: add a ``CSVLogger`` (``metrics.csv``, ``hparams.yaml``).
        tensorboard: add a ``TensorBoardLogger`` (events in ``tensorboard/``).
        comet_info_path: Comet info file; Comet is added when given (see :func:`build_comet_logger`).
        comet_exp_name: Comet experiment name; defaults to ``name``.
        comet_online: ``online`` of :func:`build_comet_logger`.
        extra: more loggers, appended as they are.
        version: run folder, an int (``version_<n>``) or a str; default: next free one.

    Returns:
        The loggers, in the order CSV, TensorBoard, Comet, ``extra``.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     loggers = build_loggers(tmp, "demo", tensorboard=True)
        ...     [Path(lg.log_dir).relative_to(tmp).as_posix() for lg in loggers]
        ['demo/version_0', 'demo/version_0/tensorboard']
    """
    if not isinstance(name, str) or not name.strip() or os.sep in name or "/" in name:
        raise ValueError(f"Expected `name` to be a non-empty folder name without '/', but got {name!r}.")
    extra_loggers = list(extra) if extra is not None else []
    for logger in extra_loggers:
        if not isinstance(logger, Logger):
            raise ValueError(f"Expected every item of `extra` to be a Lightning Logger, but got {logger!r}.")
    run_version = _resolve_version(Path(save_dir) / name, version)
    comet = None
    if comet_info_path is not None:
        run_dir = Path(save_dir) / name / run_version
        comet = build_comet_logger(comet_info_path, comet_exp_name or name, run_dir, online=comet_online)
    loggers: list[Logger] = []
    if csv:
        loggers.append(CSVLogger(str(save_dir), name=name, version=run_version))
    if tensorboard:
        loggers.append(TensorBoardLogger(str(save_dir), name=name, version=run_version, sub_dir="tensorboard"))
    if comet is not None:
        loggers.append(comet)
    return loggers + extra_loggers


def _to_primitive(value: Any) -> Any:
    """``None``/bool/int/float/str as they are, 0-d tensors and numpy scalars as Python, else ``str``."""
    if value is None or type(value) in _PRIMITIVES:
        return value
    if getattr(value, "shape", None) == () and hasattr(value, "item"):
        item = value.item()
        if type(item) in _PRIMITIVES:
            return item
    return str(value)


def _flatten(params: Mapping[Any, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a/b": 1}`` (Lightning's delimiter), values made primitive."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = _to_primitive(value)
    return flat


def log_hyperparams(loggers: Logger | Iterable[Logger], params: Mapping[str, Any] | Namespace) -> dict[str, Any]:
    """Log a (possibly nested) dict of parameters to every logger (seed 002's ``logging_param``).

    Nested dicts are flattened with ``/`` (Lightning's delimiter); values that are not ``None``,
    bool, int, float or str become strings (0-d tensors and numpy scalars become Python
    numbers), so every logger, and a ``yaml.safe_load`` of ``hparams.yaml``, accepts them.

    Args:
        loggers: one logger or several.
        params: the parameters.

    Returns:
        The flat dict that was logged.

    Example:
        >>> log_hyperparams([], {"optim": {"lr": 0.1}, "teacher": object})
        {'optim/lr': 0.1, 'teacher': "<class 'object'>"}
    """
    if isinstance(params, Namespace):
        params = vars(params)
    if not isinstance(params, Mapping):
        raise ValueError(f"Expected `params` to be a dict, but got {params!r}.")
    targets = [loggers] if isinstance(loggers, Logger) else list(loggers)
    for logger in targets:
        if not isinstance(logger, Logger):
            raise ValueError(f"Expected `loggers` to hold Lightning Loggers, but got {logger!r}.")
    flat = _flatten(params)
    for logger in targets:
        logger.log_hyperparams(flat)
    return flat
