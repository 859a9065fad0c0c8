"""Comet: the seed-002 info file, the server/key check, and the logger with its real offline fallback.

Comet runs online only when the server answers and accepts the key; otherwise it uses Comet's real offline
mode (an archive in the run folder), with one ``UserWarning``, and never waits the ~33 s Comet spends
retrying a bad key.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import urllib.error
import urllib.request
import warnings
from argparse import Namespace
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pytorch_lightning.loggers import CometLogger
from pytorch_lightning.utilities.rank_zero import rank_zero_only

__all__ = ["CometInfo", "build_comet_logger", "comet_server_reachable", "read_comet_info"]
_DEFAULT_COMET_URL = "https://www.comet.com/clientlib/"
_INFO_FORMAT = "three non-empty lines: API key, project name, workspace"
_RESERVED_COMET_KWARGS = ("api_key", "project", "workspace", "online", "offline_directory", "name")
#: Comet's console logger: offline, its INFO/WARNING lines (a ~60-line experiment summary, "Failed to log ip",
#: git lookups, archiving steps) say nothing our one offline warning has not said; its errors still show.
_COMET_CONSOLE = logging.getLogger("comet_ml")


@dataclass(frozen=True)
class CometInfo:
    """Comet credentials and destination read from an info file.

    The API key is left out of ``repr`` so it never reaches logs or tracebacks.

    Example:
        >>> CometInfo(api_key="secret", project="kd", workspace="me")
        CometInfo(project='kd', workspace='me')
    """

    api_key: str = field(repr=False)
    project: str
    workspace: str


def read_comet_info(path: str | os.PathLike[str]) -> CometInfo:
    """Read a Comet info file: three lines, API key, project name and workspace.

    Blank lines and surrounding spaces are ignored. Error messages never contain the key.

    Args:
        path: the text file.

    Returns:
        The parsed :class:`CometInfo`.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if it is not a UTF-8 text file of exactly three non-empty lines, or the key
            contains whitespace.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = (Path(tmp) / "comet.txt").write_text("KEY123\\nkd-project\\nmy-team\\n")
        ...     read_comet_info(Path(tmp) / "comet.txt")
        CometInfo(project='kd-project', workspace='my-team')
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"Expected `comet_info_path` to be an existing file ({_INFO_FORMAT}), but got {str(path)!r}."
        )
    if not path.is_file():
        raise ValueError(f"Expected `comet_info_path` to be a file with {_INFO_FORMAT}, but got {str(path)!r}.")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(
            f"Expected `comet_info_path` {str(path)!r} to be UTF-8 text with {_INFO_FORMAT}, but it is not text."
        ) from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) != 3:
        raise ValueError(
            f"Expected `comet_info_path` {str(path)!r} to hold exactly {_INFO_FORMAT}, "
            f"but it has {len(lines)} non-empty line(s)."
        )
    api_key, project, workspace = lines
    if re.search(r"\s", api_key):
        raise ValueError(
            f"Expected the first line of `comet_info_path` {str(path)!r} to be an API key without whitespace "
            f"(format: {_INFO_FORMAT}), but it contains whitespace (key hidden)."
        )
    return CometInfo(api_key=api_key, project=project, workspace=workspace)


def _comet_root_url() -> str:
    """``scheme://host[:port]`` of the Comet server (``COMET_URL_OVERRIDE`` or www.comet.com)."""
    parts = urlsplit(os.environ.get("COMET_URL_OVERRIDE") or _DEFAULT_COMET_URL)
    return f"{parts.scheme or 'https'}://{parts.netloc}"


def comet_server_reachable(timeout: float = 2.0) -> bool:
    """Whether a TCP connection to Comet's server (``COMET_URL_OVERRIDE``, else www.comet.com:443) opens in time.

    The connect runs in a daemon thread, so a hanging DNS look-up cannot hold the caller longer.

    Args:
        timeout: seconds to wait, positive.

    Returns:
        ``True`` if the connection opened, else ``False``.

    Example:
        >>> isinstance(comet_server_reachable(timeout=0.5), bool)
        True
    """
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"Expected `timeout` to be a positive number of seconds, but got {timeout!r}.")
    parts = urlsplit(_comet_root_url())
    host, port = parts.hostname or "", parts.port or (80 if parts.scheme == "http" else 443)
    opened: list[bool] = []

    def _probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                opened.append(True)
        except (OSError, ValueError):
            pass

    thread = threading.Thread(target=_probe, name="kd-comet-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(opened)


def _key_accepted(api_key: str, timeout: float) -> bool | None:
    """Ask Comet's REST API about the key: ``True`` accepted, ``False`` rejected, ``None`` no answer."""
    url = f"{_comet_root_url()}/api/rest/v2/account-details"
    request = urllib.request.Request(url, headers={"Authorization": api_key})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return 200 <= response.status < 300
    except urllib.error.HTTPError as error:
        return False if 400 <= error.code < 500 else None
    except (OSError, ValueError):
        return None


class _CometLogger(CometLogger):
    """Lightning's CometLogger with a working offline mode, lazy start and a real ``finalize``.

    * ``CometLogger(online=False)`` also sets Comet's ``disabled=True`` and writes nothing, so the
      offline choice is made here, in ``_create_experiment``, where Lightning passes
      ``online=self._online`` to ``comet_ml.start``. Being an attribute, it is pickled into
      ``ddp_spawn`` workers and re-applied when the worker creates its experiment.
    * The experiment starts on first use (rank 0 only), not in ``__init__``, so building loggers
      has no side effect and a spawn launcher's main process leaves no stray archive behind;
      hyperparameters logged before that are kept (and pickled) and sent when it starts.
    * ``finalize`` ends the experiment, which writes the offline ``.zip`` (Lightning only
      flushes); a later use resumes the same experiment key.
    """

    def __init__(self, *, offline: bool, **kwargs: Any) -> None:
        self._kd_offline = offline
        self._kd_params: dict[str, Any] = {}
        self._kd_defer = True  # Lightning's __init__ ends by starting the experiment
        self._kd_console_level: int | None = None  # Comet's console level while an offline experiment runs
        # Lightning sets this after its availability check has already imported comet_ml, too late to
        # stop Comet's import hooks from patching TensorBoard (TensorBoardLogger scalars would reach Comet twice).
        os.environ.setdefault("COMET_DISABLE_AUTO_LOGGING", "1")
        super().__init__(**kwargs)
        self._kd_defer = False

    def _create_experiment(self) -> None:
        if self._kd_defer:
            return
        if self._kd_offline:
            self._online = False
        if self._comet_config.offline_directory:  # Comet creates only the last folder level
            Path(self._comet_config.offline_directory).mkdir(parents=True, exist_ok=True)
        if self._kd_offline and self._kd_console_level is None:  # quiet until `finalize` ends the experiment
            self._kd_console_level = _COMET_CONSOLE.level
            _COMET_CONSOLE.setLevel(logging.ERROR)
        super()._create_experiment()
        if self._kd_params:
            params, self._kd_params = self._kd_params, {}
            super().log_hyperparams(params)

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace) -> None:
        if self._experiment is None:  # keep them for the experiment, in the process that trains
            self._kd_params.update(vars(params) if isinstance(params, Namespace) else params)
        else:
            super().log_hyperparams(params)

    @property
    def version(self) -> str | None:
        """The Comet experiment key (starts the experiment on rank 0 if needed)."""
        if self._experiment_key is None:
            _ = self.experiment  # a dummy on ranks > 0
        return self._experiment_key

    def log_graph(self, model: Any, input_array: Any = None) -> None:
        _ = self.experiment  # Lightning skips the graph when no experiment exists yet
        super().log_graph(model, input_array)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self._experiment is None:
            return
        self._experiment.end()
        self._experiment = None
        if self._kd_console_level is not None:
            _COMET_CONSOLE.setLevel(self._kd_console_level)
            self._kd_console_level = None



def build_comet_logger(
    info_path: str | os.PathLike[str],
    experiment_name: str | None,
    save_dir: str | os.PathLike[str],
    *,
    online: bool | None = None,
    **comet_kwargs: Any,
) -> CometLogger:
    """Build a Comet logger from an info file, falling back to Comet's offline mode.

    ``online=None``: online when the server is reachable (:func:`comet_server_reachable`) and
    accepts the key (one REST call, 5 s at most); else, as with ``online=False``, Comet's offline
    mode with one ``UserWarning`` saying why. The archive ``save_dir/comet/<key>-<rand>.zip`` is
    written when ``Trainer.fit`` ends; upload it with ``comet upload FILE.zip``. ``online=True``
    skips the TCP probe (proxies) and raises instead of falling back. The offline choice lives on
    the logger (pickled into ``ddp_spawn`` workers), not in the environment. The one variable set
    is Lightning's own ``COMET_DISABLE_AUTO_LOGGING=1`` (if unset), early enough to take effect.

    Args:
        info_path: Comet info file (see :func:`read_comet_info`).
        experiment_name: the Comet experiment name; ``None`` lets Comet pick one.
        save_dir: folder under which ``comet/`` receives offline archives.
        online: ``None`` to detect, ``True`` to require online, ``False`` for offline.
        **comet_kwargs: more ``CometLogger`` arguments (``tags``, ``prefix``, ``log_code``, ...).

    Returns:
        A ``CometLogger`` whose experiment starts on first use, on rank 0.

    Raises:
        FileNotFoundError: if ``info_path`` does not exist.
        ValueError: for a malformed info file, a reserved key in ``comet_kwargs``, a bad
            ``online`` value, or (``online=True``) a key the server rejects.
        ConnectionError: with ``online=True`` when the server does not answer.

    Example:
        >>> import tempfile, warnings
        >>> with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     _ = (Path(tmp) / "comet.txt").write_text("KEY123\\nkd-project\\nmy-team\\n")
        ...     logger = build_comet_logger(Path(tmp) / "comet.txt", "demo", tmp, online=False)
        >>> sum("Comet runs offline" in str(w.message) for w in caught), logger.save_dir.endswith("comet")
        (1, True)
    """
    if online is not None and not isinstance(online, bool):
        raise ValueError(f"Expected `online` to be None, True or False, but got {online!r}.")
    reserved = sorted(set(_RESERVED_COMET_KWARGS) & set(comet_kwargs))
    if reserved:
        raise ValueError(f"Expected `comet_kwargs` without {reserved}, but got them; this function sets them.")
    info = read_comet_info(info_path)
    offline_dir = str(Path(save_dir) / "comet")
    reason = _offline_reason(info, info_path, online)
    if reason is not None and _global_rank() == 0:
        message = f"Comet runs offline: {reason}. The experiment is saved as an offline archive in {offline_dir!r}"
        warnings.warn(f"{message} when training ends; upload it with `comet upload <archive>.zip`.", stacklevel=2)
    return _CometLogger(
        offline=reason is not None, api_key=None if reason is not None else info.api_key, project=info.project,
        workspace=info.workspace, name=experiment_name, offline_directory=offline_dir, **comet_kwargs,
    )


def _global_rank() -> int:
    return int(getattr(rank_zero_only, "rank", 0))


def _offline_reason(info: CometInfo, info_path: str | os.PathLike[str], online: bool | None) -> str | None:
    """Why Comet must run offline, or ``None`` when online works (raises if ``online=True`` cannot)."""
    if online is False:
        return "`online=False` was requested"
    if _global_rank() > 0:  # `ddp` re-runs the script per rank; only rank 0 ever logs
        return "only rank 0 logs to Comet"
    server = _comet_root_url()
    if online is None and not comet_server_reachable():
        return f"the server {server} is unreachable (pass `online=True` if you connect through a proxy)"
    accepted = _key_accepted(info.api_key, timeout=5.0)
    if accepted:
        return None
    if online:
        if accepted is None:
            raise ConnectionError(f"Expected the Comet server {server} to answer, but it did not (online=True).")
        raise ValueError(f"Expected the Comet server to accept the API key in {str(info_path)!r}, but it refused it.")
    if accepted is None:
        return f"the server {server} did not answer the API-key check"
    return f"the server rejected the API key in {str(info_path)!r}"
