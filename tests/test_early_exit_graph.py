"""The one-graph export (kd_toolkit.early_exit.graph.export_network): per-sample exits inside one program,
in the loaded torch.export program and in ONNX Runtime; plus static batches, float16 boundaries and payloads."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from torch import nn

from kd_toolkit.early_exit import EarlyExitNetwork, boundary_payloads, cost_report, export_network, export_segments
from kd_toolkit.early_exit.deploy import load_network, load_segments

HAS_ORT = importlib.util.find_spec("onnxruntime") is not None
FORMATS = ["export", pytest.param("onnx", marks=pytest.mark.skipif(not HAS_ORT, reason="needs onnxruntime"))]
SUFFIX = {"export": ".pt2", "onnx": ".onnx"}


class FlattenByView(nn.Module):
    """``x.view(x.size(0), -1)`` cannot run on 0 rows (-1 is ambiguous): the graph must guard it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.view(x.size(0), -1))


class DataDependent(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.sum() > 0 else -x


def _network(last: nn.Module | None = None) -> EarlyExitNetwork:
    torch.manual_seed(0)
    blocks = nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()),
        nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU()),
        last or nn.Sequential(nn.Flatten(), nn.Linear(6 * 4 * 4, 5)),
    )
    net = EarlyExitNetwork(blocks, (1, 1, 8, 8), [[16], []], [0.5, 0.5]).eval()
    with torch.no_grad():
        for p in net.exits.parameters():
            p.mul_(4.0)
        scores = [net.confidence_scores(o).sort().values for o in net(_data(200))[:-1]]
    # About half leave at each exit; calibrated on other data, so that no test sample sits on a threshold
    # (a confidence within float rounding of it could go either way in another runtime).
    net.thresholds = [float(s[100] + s[101]) / 2 for s in scores]
    return net


def _data(n: int) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(n))


def _same(got, want) -> None:
    assert torch.equal(got.predictions, want.predictions) and torch.equal(got.exit_index, want.exit_index)
    torch.testing.assert_close(got.logits, want.logits, rtol=0, atol=1e-5)


@pytest.fixture(scope="module", params=FORMATS)
def programs(request, tmp_path_factory):
    """One program per threshold setting: mixed exits, everybody at exit 0, nobody before the final exit."""
    folder, net = tmp_path_factory.mktemp("graph"), _network(FlattenByView())
    out = {}
    for name, thresholds in [("mixed", net.thresholds), ("all_first", [1e-6, 1e-6]), ("none", [0.999999, 1.0])]:
        net.thresholds = thresholds
        out[name] = (list(thresholds), load_network(export_network(net, folder / f"{name}{SUFFIX[request.param]}",
                                                                   format=request.param)))
    return net, out


@pytest.mark.parametrize("setting", ["mixed", "all_first", "none"])
@pytest.mark.parametrize("batch", [1, 8, 64])
def test_one_graph_equals_eager_predict(programs, setting, batch):
    net, out = programs
    thresholds, program = out[setting]
    net.thresholds = thresholds
    x = _data(batch)
    want = net.predict(x)
    _same(program.predict(x), want)
    if setting == "all_first":
        assert want.exit_index.tolist() == [0] * batch  # later blocks ran on 0 samples
    if setting == "none":
        assert want.exit_index.tolist() == [2] * batch


def test_the_pt2_file_is_a_plain_torch_export_program(tmp_path):
    net = _network()
    path = export_network(net, tmp_path / "net.pt2", format="export")
    predictions, exit_index, logits = torch.export.load(str(path)).module()(_data(8))
    _same(type(net.predict(_data(8)))(predictions, exit_index, logits), net.predict(_data(8)))


@pytest.mark.skipif(not HAS_ORT, reason="needs onnxruntime")
def test_the_onnx_file_runs_in_onnxruntime_directly(tmp_path):
    import onnxruntime

    net = _network()
    path = export_network(net, tmp_path / "net.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["predictions", "exit_index", "logits"]
    predictions, exit_index, logits = session.run(None, {"input": _data(8).numpy()})
    want = net.predict(_data(8))
    assert predictions.tolist() == want.predictions.tolist() and exit_index.tolist() == want.exit_index.tolist()


def test_a_block_torch_export_cannot_capture_is_named(tmp_path):
    net = _network(nn.Sequential(DataDependent(), nn.Flatten(), nn.Linear(96, 5)))
    with pytest.raises(RuntimeError, match=r"cannot capture block 2 \(Sequential\) of the network.*format='torchscript'"):
        export_network(net, tmp_path / "net.pt2", format="export")
    assert list(tmp_path.iterdir()) == []  # nothing left behind


def test_export_network_targets(tmp_path):
    net = _network()
    with pytest.raises(ValueError, match=r"Expected `path` to be a file name ending with '.onnx'"):
        export_network(net, tmp_path / "net.pt2", format="onnx")
    with pytest.raises(ValueError, match=r"Expected `format` to be one of \['export', 'onnx'\]"):
        export_network(net, tmp_path / "net.pt", format="torchscript")
    with pytest.raises(FileNotFoundError, match="Expected `path` to be in an existing directory"):
        export_network(net, tmp_path / "missing" / "net.pt2", format="export")
    (tmp_path / "net.pt2").write_bytes(b"keep")
    with pytest.raises(ValueError, match="pass overwrite=True"):
        export_network(net, tmp_path / "net.pt2", format="export")
    assert (tmp_path / "net.pt2").read_bytes() == b"keep"
    export_network(net, tmp_path / "net.pt2", format="export", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.pt2"]


@pytest.mark.skipif(not HAS_ORT, reason="needs onnxruntime")
def test_static_batch_files_and_padding(tmp_path):
    net = _network()
    out = export_segments(net, tmp_path / "chain", format="onnx", static_batch=[4, 1])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["static_batch"] == [1, 4]
    assert manifest["segments"][0]["programs"] == [{"batch": 1, "file": "segment_0.b1.onnx"},
                                                   {"batch": 4, "file": "segment_0.b4.onnx"}]
    import onnx

    dims = onnx.load(str(out / "segment_1.b4.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_value == 4  # a fixed batch dimension
    x = _data(11)  # padded to 4s and split: 11 = 4 + 4 + 3
    _same(load_segments(out).predict(x), net.predict(x))


def test_float16_boundary_halves_the_payload_and_reports_accuracy(tmp_path):
    net = _network()
    x = _data(64)
    labels = net.predict(x).predictions
    out = export_segments(net, tmp_path / "chain", boundary_dtype="float16", validation=[(x, labels)])
    manifest = json.loads((out / "manifest.json").read_text())
    full = boundary_payloads(net)
    assert [b["bytes_per_sample"] for b in manifest["payload"]["boundaries"]] == \
        [b["bytes_per_sample"] // 2 for b in full["boundaries"]] == [512, 192]
    assert manifest["segments"][1]["input_dtype"] == "float16" and manifest["segments"][0]["input_dtype"] == "float32"
    validation = manifest["validation"]
    assert validation["samples"] == 64 and validation["accuracy_network"] == 1.0
    assert abs(validation["accuracy_change"]) <= 0.05  # half precision at the boundaries barely moves predictions
    shares = manifest["payload"]["exit_shares"]
    assert len(shares) == 3 and abs(sum(shares) - 1) < 1e-9 and manifest["payload"]["expected_bytes_per_sample"] > 0
    _, _, features = load_segments(out).segment(0)(x)
    assert features.dtype == torch.float16


def test_payload_is_in_the_manifest_and_the_cost_report(tmp_path):
    net = _network()
    manifest = json.loads((export_segments(net, tmp_path / "c", exit_shares=[0.5, 0.25, 0.25]) / "manifest.json")
                          .read_text())
    payload = manifest["payload"]
    assert payload["input_bytes_per_sample"] == 64 * 4
    assert [b["shape"] for b in payload["boundaries"]] == [[4, 8, 8], [6, 4, 4]]
    assert [s["boundary"]["bytes_per_sample"] for s in manifest["segments"][:2]] == [1024, 384]
    assert payload["worst_case_bytes_per_sample"] == 1408
    assert payload["expected_bytes_per_sample"] == pytest.approx(0.5 * 1024 + 0.25 * 384)
    report = cost_report(net, exit_shares=[0.5, 0.25, 0.25], repeats=1)
    assert "(4, 8, 8) float32 | 1024 | 4.00" in report and "expected 608.0 (2.38 x input)" in report
    assert "MACs" in report and "latency" in report


def test_float16_without_validation_says_how_to_measure_the_change(tmp_path):
    with pytest.warns(UserWarning, match=r"boundary_dtype='float16'.*pass validation="):
        export_segments(_network(), tmp_path / "chain", boundary_dtype="float16")


def test_the_one_graph_program_loads_with_the_copied_loader_alone(tmp_path, monkeypatch):
    import shutil
    import sys

    net = _network()
    path = export_network(net, tmp_path / "net.pt2", format="export")
    device = tmp_path / "device"
    device.mkdir()
    for name in ("deploy", "runtime", "manifest"):
        target = device / ("device_deploy.py" if name == "deploy" else f"{name}.py")
        shutil.copy(importlib.util.find_spec(f"kd_toolkit.early_exit.{name}").origin, target)
    for name in [m for m in sys.modules if m == "kd_toolkit" or m.startswith("kd_toolkit.")]:
        monkeypatch.setitem(sys.modules, name, None)  # any import of kd_toolkit now fails
    for name in ("kd_early_exit_runtime", "kd_early_exit_manifest"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    spec = importlib.util.spec_from_file_location("device_deploy", device / "device_deploy.py")
    deploy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(deploy)
    _same(deploy.load_network(path).predict(_data(8)), net.predict(_data(8)))
