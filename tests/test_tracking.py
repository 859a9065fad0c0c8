"""Tests for kd_toolkit.tracking: real loggers, real Trainer, Comet's real offline mode (no network)."""

from __future__ import annotations

import csv
import json
import pickle
import threading
import time
import warnings
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import comet_ml
import pytest
import pytorch_lightning as pl
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from kd_toolkit.tracking import (
    CometInfo,
    build_comet_logger,
    build_loggers,
    comet_server_reachable,
    log_hyperparams,
    read_comet_info,
)

FAKE_KEY = "FAKEkey0123456789abcdefXYZ"
GOOD_KEY = "GOODkey0123456789abcdefXYZ"
# Nothing listens on the discard port: the "server" refuses at once, on any machine.
REFUSING_URL = "http://127.0.0.1:9/clientlib/"


class Opaque:
    """A hyperparameter value no logger understands."""

    def __str__(self) -> str:
        return "Opaque()"


class TinyModule(pl.LightningModule):
    """nn.Linear classifier on random data that logs `train_loss` every step."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 2)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self.layer(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(0)
        data = TensorDataset(torch.randn(16, 4, generator=generator), torch.randint(0, 2, (16,), generator=generator))
        return DataLoader(data, batch_size=4)


@pytest.fixture
def info_file(tmp_path: Path) -> Path:
    path = tmp_path / "comet_info.txt"
    path.write_text(f"{FAKE_KEY}\nkd-tests\nkd-workspace\n")
    return path


@pytest.fixture
def no_comet_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMET_URL_OVERRIDE", REFUSING_URL)


class _FakeCometApi(BaseHTTPRequestHandler):
    """Answers Comet's account-details call: 200 for GOOD_KEY, 401 for any other key."""

    def do_GET(self) -> None:
        accepted = self.path.endswith("/api/rest/v2/account-details") and self.headers["Authorization"] == GOOD_KEY
        self.send_response(200 if accepted else 401)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def local_comet_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A real HTTP server on localhost standing in for Comet's REST API."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeCometApi)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    monkeypatch.setenv("COMET_URL_OVERRIDE", f"http://127.0.0.1:{server.server_address[1]}/clientlib/")
    yield
    server.shutdown()
    server.server_close()


def _offline_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    return [message for message in messages if "Comet runs offline" in message]


def _archive_messages(path: Path, kind: str) -> list[dict]:
    """Payloads of one message type in a Comet offline archive."""
    with zipfile.ZipFile(path) as archive:
        messages = [json.loads(line) for line in archive.read("messages.json").decode().splitlines()]
    return [message["payload"] for message in messages if message["type"] == kind]


def _archive_params(path: Path) -> dict[str, object]:
    """Parameters logged by hand (not Comet's auto-logged ones) in a Comet offline archive."""
    params = [payload["param"] for payload in _archive_messages(path, "parameter_msg")]
    return {p["paramName"]: p["paramValue"] for p in params if p.get("source") != "auto-logged"}


def test_read_comet_info_tolerates_blank_lines_and_hides_key(tmp_path: Path) -> None:
    path = tmp_path / "info.txt"
    path.write_text(f"\n  {FAKE_KEY}  \n\nkd-tests\nkd-workspace\n\n")
    info = read_comet_info(path)
    assert info == CometInfo(api_key=FAKE_KEY, project="kd-tests", workspace="kd-workspace")
    assert FAKE_KEY not in repr(info)


def test_read_comet_info_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_comet_info(missing)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "has 0 non-empty"),
        (f"{FAKE_KEY}\nkd-tests\n", "has 2 non-empty"),
        (f"{FAKE_KEY}\nkd-tests\nkd-workspace\nextra-line\n", "has 4 non-empty"),
        (f"{FAKE_KEY[:10]} {FAKE_KEY[10:]}\nkd-tests\nkd-workspace\n", "without whitespace"),
    ],
    ids=["empty", "two-lines", "four-lines", "space-in-key"],
)
def test_read_comet_info_malformed(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "info.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as error:
        read_comet_info(path)
    message = str(error.value)
    assert "info.txt" in message and "API key, project name, workspace" in message
    assert FAKE_KEY not in message and FAKE_KEY[:10] not in message and FAKE_KEY[10:] not in message


def test_read_comet_info_rejects_directory_and_binary(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="to be a file"):
        read_comet_info(tmp_path)
    binary = tmp_path / "info.bin"
    binary.write_bytes(b"\xff\xfe\x00key")
    with pytest.raises(ValueError, match="UTF-8 text"):
        read_comet_info(binary)


def test_comet_server_reachable_is_false_and_fast_without_server(no_comet_server: None) -> None:
    start = time.perf_counter()
    assert comet_server_reachable(timeout=1.0) is False
    assert time.perf_counter() - start < 1.5
    with pytest.raises(ValueError, match="positive number"):
        comet_server_reachable(timeout=0)


def test_comet_server_reachable_default_host_returns_within_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COMET_URL_OVERRIDE", raising=False)
    start = time.perf_counter()
    assert isinstance(comet_server_reachable(timeout=1.0), bool)
    assert time.perf_counter() - start < 1.5


def test_online_true_raises_without_server_and_hides_key(
    info_file: Path, tmp_path: Path, no_comet_server: None
) -> None:
    with pytest.raises(ConnectionError, match="did not") as error:
        build_comet_logger(info_file, "exp", tmp_path, online=True)
    assert FAKE_KEY not in str(error.value)


def test_rejected_key_falls_back_to_offline_at_once(info_file: Path, tmp_path: Path, local_comet_api: None) -> None:
    start = time.perf_counter()
    with pytest.warns(UserWarning, match="rejected the API key") as caught:
        logger = build_comet_logger(info_file, "exp", tmp_path)
    assert time.perf_counter() - start < 5
    assert len(_offline_warnings(list(caught))) == 1 and FAKE_KEY not in str(caught[0].message)
    assert logger.save_dir == str(tmp_path / "comet")
    with pytest.raises(ValueError, match="refused it") as error:
        build_comet_logger(info_file, "exp", tmp_path, online=True)
    assert FAKE_KEY not in str(error.value)


def test_accepted_key_stays_online_without_warning(tmp_path: Path, local_comet_api: None) -> None:
    info = tmp_path / "good.txt"
    info.write_text(f"{GOOD_KEY}\nkd-tests\nkd-workspace\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_comet_logger(info, "exp", tmp_path)  # the experiment starts lazily: nothing is sent
        build_comet_logger(info, "exp", tmp_path, online=True)
    assert _offline_warnings(caught) == []


def test_build_comet_logger_argument_errors(info_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Expected `online`"):
        build_comet_logger(info_file, "exp", tmp_path, online="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="without \\['api_key'\\]"):
        build_comet_logger(info_file, "exp", tmp_path, api_key="other")
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        build_loggers(tmp_path, comet_info_path=tmp_path / "missing.txt")


def test_build_loggers_argument_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Expected `name`"):
        build_loggers(tmp_path, name="a/b")
    with pytest.raises(ValueError, match="Expected `version`"):
        build_loggers(tmp_path, version=-1)
    with pytest.raises(ValueError, match="Expected every item of `extra`"):
        build_loggers(tmp_path, extra=["not a logger"])  # type: ignore[list-item]


def test_fit_writes_csv_tensorboard_and_comet_offline_archive(
    info_file: Path, tmp_path: Path, no_comet_server: None
) -> None:
    save_dir = tmp_path / "runs"
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loggers = build_loggers(save_dir, comet_info_path=info_file, tensorboard=True)
        log_hyperparams(loggers, {"optim": {"lr": 0.1}, "teacher": Opaque()})
        trainer = pl.Trainer(
            accelerator="cpu",
            max_epochs=1,
            limit_train_batches=2,
            log_every_n_steps=1,
            logger=loggers,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(TinyModule())
    elapsed = time.perf_counter() - start
    assert elapsed < 25, f"logging with Comet offline took {elapsed:.1f} s"

    offline = _offline_warnings(caught)
    assert len(offline) == 1, offline
    assert "unreachable" in offline[0] and str(save_dir / "kd" / "version_0" / "comet") in offline[0]
    assert all(FAKE_KEY not in str(w.message) for w in caught)
    assert [type(lg).__name__ for lg in loggers] == ["CSVLogger", "TensorBoardLogger", "_CometLogger"]

    # Comet: the archive is written by the end of fit (logger.finalize), not at interpreter exit.
    archives = list(save_dir.rglob("*.zip"))
    assert len(archives) == 1 and archives[0].parent == save_dir / "kd" / "version_0" / "comet"
    metrics = [m["metric"] for m in _archive_messages(archives[0], "metric_msg")]
    assert [m["step"] for m in metrics if m["metricName"] == "train_loss"] == [0, 1]
    params = _archive_params(archives[0])
    assert params["optim/lr"] == 0.1 and params["teacher"] == "Opaque()"

    event_files = list((save_dir / "kd" / "version_0" / "tensorboard").glob("events.out.tfevents.*"))
    assert event_files
    accumulator = EventAccumulator(str(event_files[0].parent))
    accumulator.Reload()
    assert "train_loss" in accumulator.Tags()["scalars"]
    assert len(accumulator.Scalars("train_loss")) == 2

    with open(save_dir / "kd" / "version_0" / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert "train_loss" in rows[0] and sum(bool(row["train_loss"]) for row in rows) == 2


def test_next_run_gets_next_version_and_offline_comet_survives_pickling(
    info_file: Path, tmp_path: Path, no_comet_server: None
) -> None:
    (tmp_path / "kd" / "version_0").mkdir(parents=True)
    with pytest.warns(UserWarning, match="`online=False` was requested") as caught:
        loggers = build_loggers(tmp_path, csv=False, comet_info_path=info_file, comet_online=False)
    assert len(_offline_warnings(list(caught))) == 1
    log_hyperparams(loggers, {"lr": 0.5})  # kept until the experiment starts, not started here
    running = comet_ml.get_running_experiment()
    assert running is None or running.ended
    # What ddp_spawn does: the worker gets a pickled copy and creates the experiment there.
    worker_logger = pickle.loads(pickle.dumps(loggers[0]))
    experiment = worker_logger.experiment
    assert type(experiment).__name__ == "OfflineExperiment" and not experiment.disabled
    assert worker_logger.version == experiment.get_key()
    worker_logger.finalize("success")
    archives = list((tmp_path / "kd" / "version_1" / "comet").glob("*.zip"))
    assert len(archives) == 1 and archives[0].name.startswith(experiment.get_key())
    assert _archive_params(archives[0])["lr"] == 0.5


def test_log_hyperparams_nested_and_objects_reach_csv_hparams(tmp_path: Path) -> None:
    (csv_logger,) = build_loggers(tmp_path)
    flat = log_hyperparams(
        csv_logger,
        {"optim": {"lr": 0.1, "betas": (0.9, 0.99)}, "model": Opaque(), "temperature": torch.tensor(2.0), "seed": 7},
    )
    assert flat == {"optim/lr": 0.1, "optim/betas": "(0.9, 0.99)", "model": "Opaque()", "temperature": 2.0, "seed": 7}
    saved = yaml.safe_load((Path(csv_logger.log_dir) / "hparams.yaml").read_text())
    assert saved == flat
    with pytest.raises(ValueError, match="Expected `params`"):
        log_hyperparams([csv_logger], [("lr", 0.1)])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Expected `loggers`"):
        log_hyperparams(["csv"], {"lr": 0.1})  # type: ignore[list-item]
