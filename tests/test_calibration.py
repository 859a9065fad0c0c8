"""Tests for kd_toolkit.early_exit.calibration: threshold calibration, sweeps, plots and latency."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from kd_toolkit.early_exit import EarlyExitNetwork, average_macs, exit_macs
from kd_toolkit.early_exit.calibration import (
    CalibrationResult,
    accuracy_drop_bound,
    calibrate_thresholds,
    collect_exit_logits,
    measure_segment_latency,
    plot_accuracy_vs_compute,
    sweep_thresholds,
)

NUM_CLASSES, DIM = 4, 16
_TEACHER = torch.randn(NUM_CLASSES, DIM, generator=torch.Generator().manual_seed(0))  # (C, D)


def _data(n: int, seed: int) -> TensorDataset:
    """Labels are argmax(W x) with 5% of them flipped: the final exit (W itself) gets about 95%."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, DIM, generator=g)  # (N, D)
    y = (x @ _TEACHER.T).argmax(-1)
    flip = torch.rand(n, generator=g) < 0.05
    y[flip] = torch.randint(0, NUM_CLASSES, (int(flip.sum()),), generator=g)
    return TensorDataset(x, y)


def _linear(weight: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.zero_()
    return layer


@pytest.fixture(scope="module")
def trained():
    """A "trained" network built by hand (no training: instant and deterministic).

    Blocks pass x through; the final block applies W; the exits apply W plus noise (more at
    exit 0), so early exits are cheaper, less accurate and less sure near decision boundaries.
    """
    eye = torch.eye(DIM)
    blocks = nn.Sequential(_linear(eye), _linear(eye), nn.Sequential(_linear(eye), _linear(eye), _linear(_TEACHER)))
    net = EarlyExitNetwork(blocks, (1, DIM), [[], []], [0.9, 0.9])
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for head, noise in zip(net.exits, [0.4, 0.1]):
            head[-1].weight.copy_(_TEACHER + noise * torch.randn(NUM_CLASSES, DIM, generator=g))
            head[-1].bias.zero_()
    return net.eval()


@pytest.fixture
def network(trained):
    return copy.deepcopy(trained)


@pytest.fixture(scope="module")
def val_loader():
    return DataLoader(_data(600, seed=2), batch_size=128)


def _predict_over(net, loader):
    results = [(net.predict(x), y) for x, y in loader]
    preds = torch.cat([r.predictions for r, _ in results])
    exits = torch.cat([r.exit_index for r, _ in results])
    labels = torch.cat([y for _, y in results])
    return (preds == labels).float().mean().item(), exits


def test_collect_exit_logits(network, val_loader):
    network.train()
    logits, labels = collect_exit_logits(network, val_loader)
    assert [tuple(t.shape) for t in logits] == [(600, NUM_CLASSES)] * 3 and labels.shape == (600,)
    accuracies = [(t.argmax(-1) == labels).float().mean().item() for t in logits]
    assert accuracies[0] < accuracies[1] < accuracies[2]
    assert network.training and not any(t.requires_grad for t in logits)


@pytest.mark.parametrize("drop", [0.0, 0.005, 0.03])
def test_accuracy_constraint_holds_on_the_calibration_data(network, val_loader, drop):
    before = network.thresholds
    result = calibrate_thresholds(network, val_loader, max_accuracy_drop=drop)
    assert isinstance(result, CalibrationResult) and network.thresholds == before  # apply=False
    assert all(0.0 < t <= 1.0 for t in result.thresholds) and len(result.thresholds) == 2
    assert result.accuracy >= result.full_accuracy - drop - 1e-9
    assert sum(result.exit_shares) == pytest.approx(1.0) and 0.0 < result.relative_compute <= 1.0
    calibrate_thresholds(network, val_loader, max_accuracy_drop=drop, apply=True)
    assert network.thresholds == result.thresholds
    accuracy, exits = _predict_over(network, val_loader)  # the real batched early exit agrees
    assert accuracy == pytest.approx(result.accuracy) and accuracy >= result.full_accuracy - drop - 1e-9
    assert average_macs(exits, exit_macs(network)) == pytest.approx(result.average_macs)


def test_a_looser_budget_saves_compute(network, val_loader):
    strict = calibrate_thresholds(network, val_loader, max_accuracy_drop=0.0, confidence_level=None)
    loose = calibrate_thresholds(network, val_loader, max_accuracy_drop=0.03, confidence_level=None)
    assert loose.average_macs < strict.average_macs < exit_macs(network)[-1]
    assert strict.accuracy >= strict.full_accuracy and strict.relative_compute < 1.0
    assert min(strict.exit_shares) > 0.0  # every exit is used


@pytest.mark.parametrize("share", [0.3, 0.7, 1.0])
def test_target_exit_share_is_respected(network, val_loader, share):
    result = calibrate_thresholds(network, val_loader, max_accuracy_drop=None, target_exit_share=share, apply=True)
    assert 1.0 - result.exit_shares[-1] >= share - 1e-9
    assert len(set(result.thresholds)) == 1 and 0.0 < result.thresholds[0] <= 1.0
    _, exits = _predict_over(network, val_loader)
    assert (exits < 2).float().mean().item() >= share - 1e-9


def test_target_exit_share_alone_replaces_the_default_drop(network, val_loader):
    alone = calibrate_thresholds(network, val_loader, target_exit_share=0.6)
    explicit = calibrate_thresholds(network, val_loader, max_accuracy_drop=None, target_exit_share=0.6)
    assert alone == explicit and 1.0 - alone.exit_shares[-1] >= 0.6 - 1e-9
    default = calibrate_thresholds(network, val_loader)  # neither given: the 0.5-point budget
    assert default == calibrate_thresholds(network, val_loader, max_accuracy_drop=0.005)
    assert default.accuracy >= default.full_accuracy - 0.005 - 1e-9


def test_unreachable_share_and_bad_targets(network, val_loader):
    with pytest.raises(ValueError, match="Expected `target_exit_share` to be reachable"):
        calibrate_thresholds(network, val_loader, max_accuracy_drop=None, target_exit_share=0.5, candidates=[1.0])
    with pytest.raises(ValueError, match="Expected exactly one of `max_accuracy_drop` and `target_exit_share`"):
        calibrate_thresholds(network, val_loader, max_accuracy_drop=0.005, target_exit_share=0.5)  # both given
    with pytest.raises(ValueError, match="Expected exactly one of"):
        calibrate_thresholds(network, val_loader, max_accuracy_drop=None)
    with pytest.raises(ValueError, match=r"Expected `max_accuracy_drop` to be a number in \[0, 1\]"):
        calibrate_thresholds(network, val_loader, max_accuracy_drop=-0.1)
    with pytest.raises(ValueError, match=r"Expected `target_exit_share` to be a number in \(0, 1\]"):
        calibrate_thresholds(network, val_loader, max_accuracy_drop=None, target_exit_share=0.0)
    with pytest.raises(ValueError, match=r"Expected `candidates` to be a non-empty sequence of numbers in \(0, 1\]"):
        calibrate_thresholds(network, val_loader, candidates=[0.0, 0.5])


def test_empty_loader(network):
    empty = DataLoader(TensorDataset(torch.zeros(0, DIM), torch.zeros(0, dtype=torch.long)), batch_size=8)
    with pytest.raises(ValueError, match="Expected `val_loader` to yield at least one"):
        calibrate_thresholds(network, empty)
    with pytest.raises(ValueError, match="Expected `loader` to yield at least one"):
        collect_exit_logits(network, [])
    with pytest.raises(ValueError, match=r"Expected `loader` to yield \(x, y\) batches"):
        collect_exit_logits(network, [torch.zeros(2, DIM)])


def test_sweep_and_plot_write_a_png(network, val_loader, tmp_path):
    values = [0.3, 0.6, 0.9, 0.99, 1.0]
    sweep = sweep_thresholds(network, val_loader, values)
    assert [point["threshold"] for point in sweep] == values
    assert {"accuracy", "full_accuracy", "average_macs", "relative_compute", "exit_shares"} <= set(sweep[0])
    compute = [point["relative_compute"] for point in sweep]
    assert compute[:-1] == sorted(compute[:-1]) and compute[-1] == pytest.approx(1.0)  # 1.0: heads skipped
    assert sweep[-1]["accuracy"] == pytest.approx(sweep[-1]["full_accuracy"])
    path = plot_accuracy_vs_compute(sweep, tmp_path / "plots" / "sweep.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="Expected `sweep` to be a non-empty result"):
        plot_accuracy_vs_compute([], tmp_path / "empty.png")
    with pytest.raises(ValueError, match="Expected `values` to be a non-empty sequence"):
        sweep_thresholds(network, val_loader, [1.5])


def test_latency_returns_positive_numbers(network):
    network.train()
    rows = measure_segment_latency(network, (1, DIM), batch_sizes=(1, 32), repeats=3, warmup=1)
    assert len(rows) == 2 * (network.num_exits + 1) and network.training
    assert [row["segment"] for row in rows[:4]] == [0, 1, 2, "full"]
    assert all(row["mean_ms"] > 0 and row["min_ms"] > 0 and row["std_ms"] >= 0 for row in rows)
    assert {row["batch_size"] for row in rows} == {1, 32} and rows[0]["device"] == "cpu"
    with pytest.raises(ValueError, match="Expected `batch_sizes` to be positive ints"):
        measure_segment_latency(network, None, batch_sizes=(0,))


def test_drop_bound_is_the_clopper_pearson_upper_bound():
    # P(Binomial(n, p) <= k) = 1 - level at the bound; k = 0 has the closed form 1 - (1 - level) ** (1 / n)
    assert accuracy_drop_bound(0, 1000, 0.95) == pytest.approx(1 - 0.05 ** (1 / 1000), rel=1e-9)
    bound = accuracy_drop_bound(3, 500, 0.9)
    tail = sum(torch.distributions.Binomial(500, torch.tensor(bound)).log_prob(torch.tensor(float(i))).exp().item()
               for i in range(4))
    assert tail == pytest.approx(0.1, abs=1e-4)  # float32 log_prob
    assert accuracy_drop_bound(3, 500, 0.99) > bound > accuracy_drop_bound(3, 500, 0.5) > 3 / 500 * 0.9
    assert accuracy_drop_bound(0, 10, early=0) == 0.0 and accuracy_drop_bound(10, 10) == 1.0
    for kwargs, name in [({"confidence_level": 1.0}, "confidence_level"), ({"confidence_level": 0}, "confidence_level"),
                         ({"losses": 11}, "losses"), ({"n": 0}, "n"), ({"early": -1}, "early")]:
        args = {"losses": 1, "n": 10, **kwargs}
        with pytest.raises(ValueError, match=f"Expected `{name}`"):
            accuracy_drop_bound(**args)


@pytest.mark.parametrize("drop", [0.01, 0.03])
def test_the_bound_is_reported_and_respected(network, val_loader, drop):
    bounded = calibrate_thresholds(network, val_loader, max_accuracy_drop=drop, confidence_level=0.95)
    observed = calibrate_thresholds(network, val_loader, max_accuracy_drop=drop, confidence_level=None)
    assert bounded.confidence_level == 0.95 and observed.accuracy_drop_bound is None
    assert bounded.full_accuracy - bounded.accuracy <= bounded.accuracy_drop_bound + 1e-9  # the bound covers it
    assert bounded.accuracy_drop_bound <= drop + 1e-9
    with pytest.raises(ValueError, match=r"Expected `confidence_level` to be a float in \(0, 1\)"):
        calibrate_thresholds(network, val_loader, confidence_level=1.5)


def test_the_promise_holds_off_the_validation_set(network):
    """Over several validation draws, the drop on fresh data stays within the target at the bound."""
    test_loader = DataLoader(_data(20000, seed=99), batch_size=4096)
    drops = []
    for seed in range(10, 15):
        calibrate_thresholds(network, DataLoader(_data(400, seed=seed), batch_size=400), max_accuracy_drop=0.02,
                             apply=True)
        accuracy, _ = _predict_over(network, test_loader)
        network.thresholds = [1.0, 1.0]
        full, _ = _predict_over(network, test_loader)
        drops.append(full - accuracy)
    assert max(drops) <= 0.02, drops


def test_a_validation_set_too_small_for_the_promise_warns_and_keeps_exits_closed(network):
    small = DataLoader(_data(100, seed=7), batch_size=100)  # even 0 losses bound the drop at ~3% (95%)
    with pytest.warns(UserWarning, match="100 validation samples cannot show a drop <= 0.005"):
        result = calibrate_thresholds(network, small, max_accuracy_drop=0.005)
    assert result.thresholds == [1.0, 1.0] and result.accuracy_drop_bound == 0.0


def test_a_zero_drop_with_a_confidence_level_warns_without_a_sample_count(network, val_loader):
    with pytest.warns(UserWarning, match="cannot show a drop <= 0 ") as caught:
        result = calibrate_thresholds(network, val_loader, max_accuracy_drop=0.0)
    assert "or more validation samples" not in str(caught[0].message)  # no finite sample can promise 0
    assert result.thresholds == [1.0, 1.0]
