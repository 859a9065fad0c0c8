"""Issue 10, early-exit part ("Nothing silent, nothing lost"): one row per bad input, with the error type and a
message that names the argument, the manifest key or the file."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from kd_toolkit.early_exit import EarlyExitModule, EarlyExitNetwork, export_network, export_segments
from kd_toolkit.early_exit.deploy import load_segments
from kd_toolkit.early_exit.manifest import validate_manifest


def _network(middle: nn.Module | None = None) -> EarlyExitNetwork:
    torch.manual_seed(0)
    blocks = nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU()),
        middle or nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU()),
        nn.Sequential(nn.Flatten(), nn.Linear(6 * 4 * 4, 3)),
    )
    return EarlyExitNetwork(blocks, (1, 1, 8, 8), [[], []], [0.5, 0.5]).eval()


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 6, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y if y.sum() > 0 else -y


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    return export_segments(_network(), tmp_path_factory.mktemp("good") / "chain")


@pytest.fixture
def copy(export_dir, tmp_path) -> Path:
    """A fresh copy of a good export, to break."""
    return Path(shutil.copytree(export_dir, tmp_path / "chain"))


def _edit(directory: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))
    return directory


def _outside(m: dict[str, Any]) -> None:
    entry = m["segments"][0]
    digest = entry["digests"].pop(entry["file"])
    entry["file"] = entry["files"][0] = entry["programs"][0]["file"] = "../outside.pt2"
    entry["digests"]["../outside.pt2"] = digest
    m["files"][0] = "../outside.pt2"


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(m: dict[str, Any]) -> None:
        *path, last = key.split(".")
        table: Any = m
        for part in path:
            table = table[int(part)] if part.isdigit() else table[part]
        if value is _DELETE:
            del table[last]
        else:
            table[last] = value

    return change


_DELETE = object()

MANIFEST_ROWS = [
    # (id, change, error, message naming the key)
    ("file-outside-the-directory", _outside, ValueError, r"`segments\[0\]\.files\[0\]` to be a file inside the export"),
    ("absolute-file", _set("segments.1.files", ["/etc/passwd"]), ValueError, r"`segments\[1\]\.files\[0\]` to be a file "
                                                                              "name relative"),
    ("missing-key", _set("num_classes", _DELETE), ValueError, r"the key `num_classes` is missing"),
    ("missing-segment-key", _set("segments.2.input_shape", _DELETE), ValueError, r"`segments\[2\]\.input_shape` is missing"),
    ("wrong-type", _set("num_segments", "3"), ValueError, r"`num_segments` to be of type int"),
    ("bool-for-int", _set("num_classes", True), ValueError, r"`num_classes` to be of type int"),
    ("count-mismatch", _set("num_segments", 4), ValueError, r"`num_segments` to be the length of `segments` \(3\)"),
    ("unknown-format", _set("format", "tflite"), ValueError, r"`format` to be one of"),
    ("unknown-dtype", _set("input_dtype", "int8"), ValueError, r"`input_dtype` to be one of"),
    ("segment-dtype", _set("segments.1.input_dtype", "float16"), ValueError, r"`segments\[1\]\.input_dtype` to be "
                                                                              "'float32'"),
    ("shape-chain", _set("segments.1.input_shape", [4, 4, 4]), ValueError, r"`segments\[1\]\.input_shape` to be the "
                                                                            r"feature_shape of segment 0"),
    ("bad-shape", _set("segments.0.feature_shape", [4, -8, 8]), ValueError, r"`segments\[0\]\.feature_shape` to be a "
                                                                              "list of positive ints"),
    ("thresholds", _set("thresholds", [0.5]), ValueError, r"`thresholds` to be 2 number\(s\)"),
    ("payload-bytes", _set("segments.0.boundary.bytes_per_sample", 1), ValueError,
     r"`segments\[0\]\.boundary\.bytes_per_sample` to be 1024"),
    ("old-schema", _set("schema", "kd_toolkit.segments/1"), ValueError, r"`schema` to be 'kd_toolkit.segments/2'"),
    ("index", _set("segments.1.index", 0), ValueError, r"`segments\[1\]\.index` to be 1"),
    ("files-list", _set("files", ["segment_0.pt2"]), ValueError, r"`files` to be the files of the segments"),
]


@pytest.mark.parametrize(("change", "error", "message"), [r[1:] for r in MANIFEST_ROWS], ids=[r[0] for r in MANIFEST_ROWS])
def test_a_bad_manifest_is_refused_before_anything_is_loaded(copy, monkeypatch, change, error, message):
    (copy.parent / "outside.pt2").write_bytes((copy / "segment_0.pt2").read_bytes())  # a real file out there
    loaded = []
    monkeypatch.setattr(torch.export, "load", lambda *a, **k: loaded.append(a))
    with pytest.raises(error, match=message):
        load_segments(_edit(copy, change))
    assert loaded == []  # nothing was loaded


def test_validate_manifest_names_a_non_object():
    with pytest.raises(ValueError, match=r"manifest.json: expected `<manifest>` to be a JSON object"):
        validate_manifest([], ".")


def _truncate(d: Path) -> None:
    data = (d / "segment_1.pt2").read_bytes()
    (d / "segment_1.pt2").write_bytes(data[: len(data) // 2])


def _tamper(d: Path) -> None:
    data = bytearray((d / "segment_1.pt2").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (d / "segment_1.pt2").write_bytes(bytes(data))


FILE_ROWS = [
    ("missing", lambda d: (d / "segment_1.pt2").unlink(), FileNotFoundError, r"'segment_1.pt2' of segment 1.*is missing"),
    ("truncated", _truncate, ValueError, r"'segment_1.pt2' has \d+ bytes, but manifest.json records \d+: it is truncated"),
    ("tampered", _tamper, ValueError, r"'segment_1.pt2' does not match its digest"),
    ("no-manifest", lambda d: (d / "manifest.json").unlink(), ValueError, r"Expected `directory` to hold an export"),
]


@pytest.mark.parametrize(("damage", "error", "message"), [r[1:] for r in FILE_ROWS], ids=[r[0] for r in FILE_ROWS])
def test_a_damaged_deployment_directory_names_the_file(copy, damage, error, message):
    damage(copy)
    with pytest.raises(error, match=message):
        load_segments(copy)


SEGMENT_ROWS = [
    ("wrong-shape", 1, torch.zeros(2, 4, 4, 4), r"input of segment 1 to have shape \(B, 4, 8, 8\) \(manifest: "
                                                 r"segments\[1\]\.input_shape = \[4, 8, 8\]"),
    ("unbatched", 0, torch.zeros(1, 8, 8), r"segment 0 to have shape \(B, 1, 8, 8\).*unbatched.*unsqueeze\(0\)"),
    ("too-many-dims", 2, torch.zeros(1, 2, 6, 4, 4), r"segment 2 to have shape \(B, 6, 4, 4\)"),
]


@pytest.mark.parametrize(("index", "x", "message"), [r[1:] for r in SEGMENT_ROWS], ids=[r[0] for r in SEGMENT_ROWS])
def test_a_segment_fed_the_wrong_input_says_what_it_expects(export_dir, index, x, message):
    with pytest.raises(ValueError, match=message):
        load_segments(export_dir).segment(index)(x)


def test_predict_on_the_wrong_input_names_segment_0(export_dir):
    with pytest.raises(ValueError, match=r"segment 0 to have shape \(B, 1, 8, 8\)"):
        load_segments(export_dir).predict(torch.zeros(3, 1, 28, 28))


def _read_only(tmp_path: Path, monkeypatch) -> Path:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    if os.geteuid() == 0:  # root ignores permission bits: emulate the kernel's answer to a normal user
        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    return folder / "chain"


EXPORT_ROWS = [
    ("read-only-directory", lambda t, m: (_read_only(t, m), {}), PermissionError, r"Expected `directory` to be "
                                                                                  r"writable.*Permission denied"),
    ("missing-directory", lambda t, m: (t / "missing" / "chain", {}), FileNotFoundError,
     r"Expected `directory` to be in an existing directory.*create it first"),
    ("not-empty", lambda t, m: (_not_empty(t), {}), ValueError, r"Expected `directory` to be new, empty or a previous"),
    ("previous-export", lambda t, m: (export_segments(_network(), t / "old"), {}), ValueError, r"overwrite=True"),
    ("static-batch-zero", lambda t, m: (t / "c", {"static_batch": 0}), ValueError, r"`static_batch` to be None, a "
                                                                                    "positive int"),
    ("static-batch-str", lambda t, m: (t / "c", {"static_batch": "8"}), ValueError, r"`static_batch`"),
    ("static-batch-bool", lambda t, m: (t / "c", {"static_batch": True}), ValueError, r"`static_batch`"),
    ("static-batch-list", lambda t, m: (t / "c", {"static_batch": [8, -1]}), ValueError, r"`static_batch`"),
    ("boundary-dtype", lambda t, m: (t / "c", {"boundary_dtype": "int8"}), ValueError, r"`boundary_dtype` to be one of"),
    ("exit-shares", lambda t, m: (t / "c", {"exit_shares": [0.5, 0.5]}), ValueError, r"`exit_shares` to be 3 shares"),
    ("overwrite-type", lambda t, m: (t / "c", {"overwrite": "yes"}), ValueError, r"`overwrite` to be a bool"),
    ("format", lambda t, m: (t / "c", {"format": "tflite"}), ValueError, r"`format` to be one of \['export', 'onnx', "
                                                                          "'torchscript'\\]"),
]


def _not_empty(tmp_path: Path) -> Path:
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    return tmp_path / "other"


@pytest.mark.parametrize(("make", "error", "message"), [r[1:] for r in EXPORT_ROWS], ids=[r[0] for r in EXPORT_ROWS])
def test_bad_export_targets_and_options(tmp_path, monkeypatch, make, error, message):
    target, kwargs = make(tmp_path, monkeypatch)
    with pytest.raises(error, match=message):
        export_segments(_network(), target, **kwargs)


@pytest.mark.parametrize("export", [export_segments, lambda net, d: export_network(net, d / "net.pt2", "export")],
                         ids=["segments", "one-graph"])
def test_a_block_torch_export_cannot_capture_is_named_with_the_way_out(tmp_path, export):
    with pytest.raises(RuntimeError, match=r"cannot capture block 1 \(DataDependent\).*format='torchscript'"):
        export(_network(DataDependent()), tmp_path)


def test_an_input_shape_that_fits_the_model_but_not_the_data_is_named_on_the_first_batch():
    model = nn.Sequential(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.AdaptiveAvgPool2d(2)),
                          nn.Sequential(nn.Flatten(), nn.Linear(16, 3)))
    module = EarlyExitModule(EarlyExitNetwork(model, (1, 1, 28, 28), [[]], [0.5]))  # the data is 8x8
    x, y = torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"`input_shape` \(1, 1, 28, 28\).*samples of shape \(1, 8, 8\).*"
                                         r"input_shape=\(1, 1, 8, 8\)"):
        module.loss_components(x, y, None)
