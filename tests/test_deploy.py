"""Tests for kd_toolkit.early_exit.export and .deploy: torch.export/ONNX/TorchScript export, the manifest, loading
and atomic writes."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import kd_toolkit
from kd_toolkit.early_exit import EarlyExitNetwork
from kd_toolkit.early_exit.deploy import SegmentChain, load_segments
from kd_toolkit.early_exit.export import export_segments

ROOT = Path(__file__).resolve().parents[1]
HAS_ORT = importlib.util.find_spec("onnxruntime") is not None
NUM_CLASSES = 4


def _blocks(middle: nn.Module | None = None) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.3)),
        middle or nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU()),
        nn.Sequential(nn.Flatten(), nn.Linear(6 * 4 * 4, NUM_CLASSES)),
    )


def _network(middle: nn.Module | None = None) -> EarlyExitNetwork:
    net = EarlyExitNetwork(_blocks(middle), (1, 1, 8, 8), [[16], []], [0.5, 0.5])
    with torch.no_grad():
        for p in net.exits.parameters():
            p.mul_(4.0)  # sharper exits: confidences spread over (0, 1)
        scores = [net.confidence_scores(o).sort().values for o in net.eval()(_data())[:-1]]
    net.thresholds = [float((s[10] + s[11]) / 2) for s in scores]  # about half leave at each exit
    return net


def _data(n: int = 24) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(1))


class Untraceable(nn.Module):
    """A block with data-dependent Python control flow: works eagerly, torch.export cannot capture it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 6, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y if y.sum() > 0 else -y


class BakedBatch(nn.Module):
    """int(x.shape[0]) becomes a constant in a trace, so the trace only fits one batch size."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 6, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)  # (B, 6, 4, 4)
        return y.reshape(int(y.shape[0]), 6, 4, 4)


def _snapshot(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory):
    """Two segments keep the (slow) dynamo-based ONNX export to a couple of seconds."""
    torch.manual_seed(0)
    blocks = nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.3)),
        nn.Sequential(nn.Flatten(), nn.Linear(4 * 8 * 8, NUM_CLASSES)),
    )
    net = EarlyExitNetwork(blocks, (1, 1, 8, 8), 8, [0.3])
    return net, export_segments(net, tmp_path_factory.mktemp("onnx") / "chain", format="onnx")


@pytest.mark.filterwarnings("ignore:format='torchscript' is a legacy format:FutureWarning")
@pytest.mark.parametrize("format", ["export", "torchscript"])
def test_roundtrip_matches_network_predict(tmp_path, format):
    net = _network().train()
    out = export_segments(net, tmp_path / "chain", format=format)
    assert out == tmp_path / "chain" and net.training  # training flags restored
    chain = load_segments(out)
    assert isinstance(chain, SegmentChain) and len(chain) == 3
    x = _data(40)
    expected, got = net.predict(x), chain.predict(x)
    assert set(expected.exit_index.tolist()) == {0, 1, 2}
    assert torch.equal(got.predictions, expected.predictions) and torch.equal(got.exit_index, expected.exit_index)
    torch.testing.assert_close(got.logits, expected.logits, rtol=1e-5, atol=1e-5)
    # Device by device, through the segments, keeping track of which samples remain.
    preds, remaining, h = torch.full((40,), -1), torch.arange(40), x
    for index in range(len(chain)):
        logits, exited, h = chain.segment(index)(h)
        preds[remaining[exited]] = logits[exited].argmax(-1)
        remaining = remaining[~exited]
    assert h is None and remaining.numel() == 0 and torch.equal(preds, expected.predictions)


def test_manifest_content(tmp_path):
    net = _network()
    manifest = json.loads((export_segments(net, tmp_path / "chain") / "manifest.json").read_text())
    assert manifest["format"] == "export" and manifest["kd_toolkit_version"] == kd_toolkit.__version__
    assert manifest["thresholds"] == net.thresholds and manifest["confidence"] == "max_prob"
    assert manifest["num_segments"] == 3 and manifest["num_classes"] == NUM_CLASSES
    assert manifest["opset"] is None and manifest["static_batch"] is None
    segments = manifest["segments"]
    assert [s["file"] for s in segments] == ["segment_0.pt2", "segment_1.pt2", "segment_2.pt2"]
    for s in segments:
        assert torch.export.load(str(tmp_path / "chain" / s["file"])) is not None  # plain torch.export programs
        assert s["digests"][s["file"]]["sha256"].startswith("sha256:")
    assert [s["input_shape"] for s in segments] == [[1, 8, 8], [4, 8, 8], [6, 4, 4]]
    assert [s["feature_shape"] for s in segments] == [[4, 8, 8], [6, 4, 4], None]
    assert [s["is_last"] for s in segments] == [False, False, True]
    assert sorted(p.name for p in (tmp_path / "chain").iterdir()) == sorted(manifest["files"] + ["manifest.json"])


def test_onnx_files_pass_the_checker_and_compute_the_segments(onnx_export):
    onnx = pytest.importorskip("onnx")
    from onnx.reference import ReferenceEvaluator

    net, out = onnx_export
    net.eval()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "onnx" and manifest["opset"] >= 18
    x = _data(5)
    for entry, segment in zip(manifest["segments"], net.segments()):
        path = out / entry["file"]
        onnx.checker.check_model(str(path), full_check=True)
        model = onnx.load(str(path))
        assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch axis
        outputs = ReferenceEvaluator(model).run(None, {"input": x.numpy()})
        with torch.no_grad():
            features = segment.block(x)
            expected = [features] if segment.is_last else [features, segment.exit_head(features)]
        for got, want in zip(outputs, expected):
            np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-5)
        x = features


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime is not installed")
def test_onnx_chain_matches_network_predict(onnx_export):
    net, out = onnx_export
    x = _data(40)
    expected, got = net.predict(x), load_segments(out).predict(x)
    assert torch.equal(got.predictions, expected.predictions) and torch.equal(got.exit_index, expected.exit_index)


def test_onnx_chain_without_onnxruntime_says_what_to_install(onnx_export, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(ImportError, match="pip install onnxruntime"):
        load_segments(onnx_export[1])


def test_failed_export_leaves_the_target_untouched(tmp_path):
    target = export_segments(_network(), tmp_path / "chain")  # a previous export
    before = _snapshot(target)
    message = r"torch.export cannot capture block 1 \(Untraceable\).*format='torchscript'"
    with pytest.raises(RuntimeError, match=message):
        export_segments(_network(Untraceable()), target, overwrite=True)  # segment 0 is written, segment 1 fails
    assert _snapshot(target) == before
    with pytest.raises(RuntimeError, match=message):
        export_segments(_network(Untraceable()), tmp_path / "fresh")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chain"]  # no staging leftovers, no "fresh"


def test_overwriting_a_previous_export(tmp_path):
    net = _network()
    export_segments(net, tmp_path / "chain")
    net.thresholds = [1.0, 1.0]
    with pytest.raises(ValueError, match="holds a previous export; pass overwrite=True"):
        export_segments(net, tmp_path / "chain")
    export_segments(net, tmp_path / "chain", overwrite=True)
    assert load_segments(tmp_path / "chain").thresholds == [1.0, 1.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chain"]


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.filterwarnings("ignore:format='torchscript' is a legacy format:FutureWarning")
def test_trace_that_only_fits_one_batch_size_is_rejected(tmp_path):
    with pytest.raises(RuntimeError, match="fails on a batch of 3"):
        export_segments(_network(BakedBatch()), tmp_path / "chain", format="torchscript")
    assert not (tmp_path / "chain").exists()


def test_bad_targets_and_options(tmp_path):
    net = _network()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="Expected `directory` to be new, empty or a previous export"):
        export_segments(net, tmp_path / "other")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="Expected `directory` to be a directory path"):
        export_segments(net, tmp_path / "file")
    export_segments(net, tmp_path / "chain")
    (tmp_path / "chain" / "extra.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"Expected `directory` to hold only a previous export.*extra\.bin"):
        export_segments(net, tmp_path / "chain", overwrite=True)
    with pytest.raises(ValueError, match=r"Expected `format` to be one of \['export', 'onnx', 'torchscript'\]"):
        export_segments(net, tmp_path / "new", format="tflite")
    with pytest.raises(ValueError, match="Expected `directory` to hold an export"):
        load_segments(tmp_path / "other")


def test_chain_thresholds_and_segment_index_are_validated(tmp_path):
    chain = load_segments(export_segments(_network(), tmp_path / "chain"))
    with pytest.raises(ValueError, match=r"Expected `thresholds` to be 2 number\(s\) in \(0, 1\]"):
        chain.thresholds = [0.5]
    with pytest.raises(ValueError, match=r"Expected `index` to be an int in \[0, 3\)"):
        chain.segment(3)
    chain.thresholds = [1e-6, 1.0]
    assert chain.predict(_data(6)).exit_index.tolist() == [0] * 6


def _load_copied_deploy(folder, monkeypatch):
    """Load ``folder/device_deploy.py`` as a plain module (no package) with every kd_toolkit import failing."""
    for name in [m for m in sys.modules if m == "kd_toolkit" or m.startswith("kd_toolkit.")]:
        monkeypatch.setitem(sys.modules, name, None)  # any import of kd_toolkit now fails
    for name in ("kd_early_exit_runtime", "kd_early_exit_manifest"):
        monkeypatch.delitem(sys.modules, name, raising=False)  # the siblings are loaded afresh
    spec = importlib.util.spec_from_file_location("device_deploy", folder / "device_deploy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _copy_loader(device: Path, names=("runtime", "manifest")) -> None:
    device.mkdir()
    shutil.copy(importlib.util.find_spec("kd_toolkit.early_exit.deploy").origin, device / "device_deploy.py")
    for name in names:
        shutil.copy(importlib.util.find_spec(f"kd_toolkit.early_exit.{name}").origin, device / f"{name}.py")


@pytest.mark.filterwarnings("ignore:format='torchscript' is a legacy format:FutureWarning")
@pytest.mark.parametrize("format", ["export", "torchscript", pytest.param("onnx", marks=pytest.mark.skipif(
    not HAS_ORT, reason="onnxruntime is not installed"))])
def test_the_deploy_file_runs_the_chain_without_kd_toolkit(tmp_path, monkeypatch, format, onnx_export):
    net, out = onnx_export if format == "onnx" else (_network(), None)
    out = out or export_segments(net, tmp_path / "chain", format=format)
    expected = net.eval().predict(_data(30))
    _copy_loader(tmp_path / "device")
    deploy = _load_copied_deploy(tmp_path / "device", monkeypatch)
    assert deploy.runtime.__file__ == str((tmp_path / "device" / "runtime.py").resolve())  # the copy beside it
    assert deploy.schema.__file__ == str((tmp_path / "device" / "manifest.py").resolve())
    got = deploy.load_segments(out).predict(_data(30))
    assert torch.equal(got.predictions, expected.predictions) and torch.equal(got.exit_index, expected.exit_index)
    logits, exited, features = deploy.load_segments(out).segment(0)(_data(30))
    assert features.shape[0] == int((~exited).sum()) and logits.shape == (30, NUM_CLASSES)


@pytest.mark.parametrize(("copied", "missing"), [((), "runtime"), (("runtime",), "manifest")])
def test_the_deploy_file_without_its_siblings_says_what_to_copy(tmp_path, monkeypatch, copied, missing):
    _copy_loader(tmp_path / "device", copied)
    with pytest.raises(ImportError, match=f"needs its sibling {missing}.py"):
        _load_copied_deploy(tmp_path / "device", monkeypatch)


def test_importing_the_loader_does_not_pull_in_lightning():
    code = ("import sys, kd_toolkit.early_exit.deploy; "
            "print(sorted(m for m in sys.modules if 'lightning' in m or m == 'kd_toolkit.early_exit.module'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.stdout.strip() == "[]"
