"""Tests for kd_toolkit.early_exit.runtime: the one exit rule, and proof that every user goes through it."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from kd_toolkit.early_exit import EarlyExitModule, EarlyExitNetwork, deploy, runtime
from kd_toolkit.early_exit.calibration import calibrate_thresholds, sweep_thresholds
from kd_toolkit.early_exit.deploy import load_segments
from kd_toolkit.early_exit.export import export_segments

NUM_CLASSES = 3


def _network() -> EarlyExitNetwork:
    torch.manual_seed(0)
    blocks = nn.Sequential(nn.Sequential(nn.Linear(6, 8), nn.ReLU()), nn.Sequential(nn.Linear(8, 8), nn.ReLU()),
                           nn.Linear(8, NUM_CLASSES))
    return EarlyExitNetwork(blocks, (1, 6), [[], []], [0.99, 0.99])


def _data(n: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 6, generator=g), torch.randint(0, NUM_CLASSES, (n,), generator=g)


@pytest.fixture
def everyone_leaves_first(monkeypatch):
    """Replace THE exit rule by "everybody leaves" and count its calls: a user with its own copy would not notice."""
    calls = []

    def rule(scores, threshold):
        calls.append(tuple(scores.shape))
        return torch.ones_like(scores, dtype=torch.bool)

    monkeypatch.setattr(runtime, "leaves", rule)
    return calls


def test_network_predict_and_segments_use_the_runtime_rule(everyone_leaves_first):
    net, (x, _) = _network(), _data()
    assert net.predict(x).exit_index.tolist() == [0] * 20
    logits, exited, features = net.segments()[0].eval()(x)
    assert bool(exited.all()) and features.shape[0] == 0
    assert len(everyone_leaves_first) == 2


def test_the_standalone_loader_uses_the_runtime_rule(everyone_leaves_first, tmp_path):
    assert deploy.runtime is runtime  # inside the package the loader imports its sibling, not a copy
    chain = load_segments(export_segments(_network(), tmp_path / "chain"))
    x, _ = _data()
    assert chain.predict(x).exit_index.tolist() == [0] * 20
    _, exited, features = chain.segment(0)(x)
    assert bool(exited.all()) and features.shape[0] == 0
    assert len(everyone_leaves_first) == 2


def test_calibration_uses_the_runtime_rule(everyone_leaves_first):
    x, y = _data()
    result = calibrate_thresholds(_network(), [(x, y)], target_exit_share=1.0, candidates=[0.5])
    assert result.exit_shares == [1.0, 0.0, 0.0] and everyone_leaves_first
    assert sweep_thresholds(_network(), [(x, y)], [0.5])[0]["exit_shares"][0] == 1.0


def test_module_validation_uses_the_runtime_rule(everyone_leaves_first):
    module = EarlyExitModule(_network())
    loader = DataLoader(TensorDataset(*_data()), batch_size=10)
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    metrics = trainer.validate(module, loader, verbose=False)[0]
    assert metrics["val_exit_0_share"] == 1.0 and metrics["val_exit_2_share"] == 0.0
    assert len(everyone_leaves_first) == 2 * 2  # two batches, two early exits each


def test_exit_indices_and_chain_agree_with_the_rule():
    scores = [torch.tensor([0.95, 0.5, 0.5, 0.2]), torch.tensor([0.1, 0.9, 0.3, 0.2])]
    assert runtime.exit_indices(scores, [0.9, 0.8]).tolist() == [0, 1, 2, 2]
    assert runtime.exit_indices(scores, [0.95, 1.0]).tolist() == [2, 2, 2, 2]  # strictly greater; 1.0 = closed
    assert not runtime.head_runs(1.0) and runtime.head_runs(0.999)
    assert runtime.exit_costs([10, 20, 30], [1, 2], [1.0, 0.5]) == [11, 32, 62]


@pytest.mark.parametrize("value, ok", [(0.5, True), (1, True), (1.0, True), (0.0, False), (1.5, False),
                                       (float("nan"), False), (True, False), ("0.5", False)])
def test_is_threshold(value, ok):
    assert runtime.is_threshold(value) is ok


def test_eval_mode_restores_mixed_flags():
    model = nn.Sequential(nn.Dropout(), nn.Sequential(nn.BatchNorm1d(2)))
    model[1].eval()
    with runtime.eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == [True, True, False, False]


def test_runtime_imports_only_torch():
    source = open(runtime.__file__, encoding="utf-8").read()
    imports = {line.split()[1].split(".")[0] for line in source.splitlines() if line.startswith(("import ", "from "))}
    assert imports <= {"__future__", "contextlib", "math", "numbers", "collections", "typing", "torch"}


def _tensor_rule(logits, threshold, confidence):
    return bool(runtime.leaves(runtime.confidence_scores(logits, confidence), threshold).item())


@pytest.mark.parametrize("confidence", ["max_prob", "entropy"])
def test_one_sample_decision_equals_the_tensor_rule(confidence):
    """leaves_one (Python floats, one host transfer) decides as the float32 tensor rule does, at the edges too."""
    g = torch.Generator().manual_seed(0)
    rows = [torch.randn(1, 10, generator=g) * scale for scale in (0.1, 1.0, 3.0, 10.0, 100.0) for _ in range(200)]
    rows += [torch.tensor([[float("nan"), 1.0, 0.0]]), torch.tensor([[float("inf"), 1.0, 0.0]]),
             torch.tensor([[float("-inf"), 1.0, 0.0]]), torch.tensor([[2.0, 2.0, 0.0]]), torch.tensor([[5.0]]),
             torch.tensor([[30.0, 0.0]], dtype=torch.float16), torch.tensor([[1e4, -1e4]])]
    checked = 0
    for logits in rows:
        score = float(runtime.confidence_scores(logits, confidence))
        thresholds = [0.3, 0.6, 0.9, 0.99, 0.999999, 1.0]
        thresholds += [t for t in (score, score - 1e-7, score + 1e-7, score - 2e-4) if 0.0 < t <= 1.0]  # the band
        for t in thresholds:
            assert runtime.leaves_one(logits, t, confidence) == _tensor_rule(logits, t, confidence), (logits, t)
            checked += 1
    assert checked > 6000


def test_one_sample_predict_equals_the_batched_chain():
    """predict on one sample (runtime.run_one) gives the batched chain's predictions, exits and logits."""
    net = _network().eval()
    x = torch.randn(300, 6, generator=torch.Generator().manual_seed(3)) * 3
    x[7, 0] = float("nan")  # NaN logits: never leaves early, torch's argmax picks the prediction
    exits = set()
    for thresholds in ([0.5, 0.5], [0.9, 0.6], [1.0, 0.34], [0.9, 0.34], [0.999999, 1.0], [1e-6, 1e-6]):
        net.thresholds = thresholds
        with torch.no_grad():
            outputs = net(x)
        for i in range(len(x)):
            one = net.predict(x[i : i + 1])
            with torch.no_grad():
                chain = runtime.run_chain(net._steps[0], x[i : i + 1], NUM_CLASSES)  # the general path
            assert one.exit_index.tolist() == chain[1].tolist() and one.predictions.tolist() == chain[0].tolist()
            assert one.predictions.dtype == one.exit_index.dtype == torch.long and one.logits.shape == (1, NUM_CLASSES)
            torch.testing.assert_close(one.logits, outputs[int(one.exit_index)][i : i + 1], equal_nan=True)
            exits.add(int(one.exit_index))
    assert exits == {0, 1, 2}


def test_one_sample_predict_uses_the_runtime_rule(monkeypatch):
    calls = []

    def rule(scores, threshold):
        calls.append(type(scores).__name__)
        return True if isinstance(scores, float) else torch.ones_like(scores, dtype=torch.bool)

    monkeypatch.setattr(runtime, "leaves", rule)
    net = _network().eval()
    assert net.predict(_data()[0][:1]).exit_index.tolist() == [0] and calls == ["float"]
