"""Tests for kd_toolkit.early_exit: construction, batched early exit, segments, MACs, bad input."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
from torch import nn

from kd_toolkit.early_exit import (
    EarlyExitNetwork,
    EarlyExitNetworkSegmentor,
    EarlyExitPrediction,
    average_macs,
    confidence_scores,
    exit_macs,
)

INPUT_SHAPE = (1, 1, 8, 8)
NUM_CLASSES = 5


def _conv_blocks(seed: int = 0) -> nn.Sequential:
    """Three blocks with BatchNorm (non-trivial running stats) and Dropout, in training mode."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5)),
        nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.5)),
        nn.Sequential(nn.Flatten(), nn.Linear(8 * 4 * 4, NUM_CLASSES)),
    )
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model


class SplitModel(nn.Module):
    """The seed's convention: blocks in an nn.Sequential called `net`."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _conv_blocks()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _network(thresholds=(0.5, 0.5), confidence="max_prob", neurons=((16,), ())) -> EarlyExitNetwork:
    neurons = [list(n) for n in neurons]
    net = EarlyExitNetwork(_conv_blocks(), INPUT_SHAPE, neurons, list(thresholds), confidence=confidence)
    torch.manual_seed(1)
    for head in net.exits:  # sharper exits so confidences spread over (0, 1)
        for p in head.parameters():
            p.data.mul_(4.0)
    return net.train()


def _reference_predict(net: EarlyExitNetwork, x: torch.Tensor):
    """One sample at a time, written independently of the library's bookkeeping."""
    net.eval()
    preds, exits, logits = [], [], []
    with torch.no_grad():
        for sample in x:
            h = sample.unsqueeze(0)
            for index, block in enumerate(net.blocks):
                h = block(h)
                if index == len(net.blocks) - 1:
                    out, taken = h, index
                    break
                out = net.exits[index](h)
                if net.confidence_scores(out).item() > net.thresholds[index]:
                    taken = index
                    break
            preds.append(out.argmax(-1).item())
            exits.append(taken)
            logits.append(out[0])
    return torch.tensor(preds), torch.tensor(exits), torch.stack(logits)


def _spread_thresholds(net: EarlyExitNetwork, x: torch.Tensor) -> list[float]:
    """Thresholds halfway between two neighbouring scores near the median (no score sits on one)."""
    net.eval()
    with torch.no_grad():
        outs = net(x)
    thresholds = []
    for logits in outs[:-1]:
        scores = net.confidence_scores(logits).sort().values
        k = len(scores) // 2
        thresholds.append(float((scores[k] + scores[k + 1]) / 2))
    return thresholds


def test_structure_and_forward_returns_logits_of_every_exit():
    net = _network(neurons=((16, 8), ()))
    assert net.num_exits == 3 and len(net.exits) == 2 and net.num_classes == NUM_CLASSES
    assert net.block_output_shapes == [(4, 8, 8), (8, 4, 4), (NUM_CLASSES,)]
    assert [type(m) for m in net.exits[0]] == [nn.Flatten, nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    assert [type(m) for m in net.exits[1]] == [nn.Flatten, nn.Linear]  # [] -> direct Linear
    outs = net.eval()(torch.randn(6, 1, 8, 8))
    assert [tuple(o.shape) for o in outs] == [(6, NUM_CLASSES)] * 3
    assert not torch.allclose(outs[0].sum(-1), torch.ones(6))  # logits, no softmax inside


def test_int_neurons_and_seed_split_model_share_parameters():
    model = SplitModel()
    net = EarlyExitNetwork(model, INPUT_SHAPE, 12, [0.9, 0.9])
    assert net.blocks is model.net
    assert [m.out_features for m in net.exits[0] if isinstance(m, nn.Linear)] == [12, NUM_CLASSES]
    assert net.block_output_shapes[-1] == (NUM_CLASSES,)


def test_dry_run_restores_training_flags_and_records_no_grad():
    model = _conv_blocks()
    model[1].eval()  # a mixed state must survive the dry run and predict
    net = EarlyExitNetwork(model, INPUT_SHAPE, 8, [0.9, 0.9])
    assert model.training and not model[1].training and model[0][1].training
    net.predict(torch.randn(3, 1, 8, 8))
    assert model.training and not model[1].training and model[0][1].training
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize("confidence", ["max_prob", "entropy"])
@pytest.mark.parametrize("setting", ["spread", "all_one", "very_low", "mixed"])
def test_predict_matches_one_sample_reference(confidence, setting):
    net = _network(confidence=confidence)
    torch.manual_seed(2)
    x = torch.randn(41, 1, 8, 8)
    spread = _spread_thresholds(net, x)
    settings = {"spread": spread, "all_one": [1.0, 1.0], "very_low": [1e-6, 1e-6], "mixed": [1.0, spread[1]]}
    net.thresholds = settings[setting]
    net.train()
    result = net.predict(x)
    assert isinstance(result, EarlyExitPrediction) and net.training
    preds, exits, logits = _reference_predict(net, x)
    assert torch.equal(result.predictions, preds) and torch.equal(result.exit_index, exits)
    assert result.predictions.dtype == result.exit_index.dtype == torch.long
    torch.testing.assert_close(result.logits, logits, rtol=1e-5, atol=1e-5)
    expected = {"spread": {0, 1, 2}, "all_one": {2}, "very_low": {0}, "mixed": {1, 2}}[setting]
    assert set(result.exit_index.tolist()) == expected


@pytest.mark.parametrize("setting", ["spread", "mixed"])
def test_one_sample_predict_matches_the_batch_and_restores_mixed_modes(setting):
    net = _network()
    x = torch.randn(30, 1, 8, 8)
    spread = _spread_thresholds(net, x)
    net.thresholds = spread if setting == "spread" else [1.0, spread[1]]
    net.train()
    net.blocks[1].eval()  # mixed modes must come back as they were
    modes = [m.training for m in net.modules()]
    batched = net.predict(x)
    singles = [net.predict(x[i : i + 1]) for i in range(len(x))]
    assert [m.training for m in net.modules()] == modes
    assert torch.equal(torch.cat([r.predictions for r in singles]), batched.predictions)
    assert torch.equal(torch.cat([r.exit_index for r in singles]), batched.exit_index)
    torch.testing.assert_close(torch.cat([r.logits for r in singles]), batched.logits, rtol=1e-5, atol=1e-5)
    assert all(r.exit_index.dtype == torch.long and r.logits.shape == (1, NUM_CLASSES) for r in singles)


def test_later_blocks_run_only_on_undecided_samples():
    net = _network()
    x = torch.randn(40, 1, 8, 8)
    net.thresholds = _spread_thresholds(net, x)
    seen = {1: [], 2: []}
    for index in seen:
        net.blocks[index].register_forward_hook(lambda m, inp, out, i=index: seen[i].append(inp[0].shape[0]))
    exits = net.predict(x).exit_index
    assert seen[1] == [int((exits >= 1).sum())] and seen[2] == [int((exits == 2).sum())]
    assert 0 < seen[2][0] < seen[1][0] < 40
    seen[1].clear(), seen[2].clear()
    net.thresholds = [1e-6, 1e-6]
    net.predict(x)
    assert seen == {1: [], 2: []}  # everyone left at exit 0: the rest never ran


def test_predict_on_empty_batch():
    result = _network().predict(torch.randn(0, 1, 8, 8))
    assert result.predictions.shape == (0,) and result.logits.shape == (0, NUM_CLASSES)


def test_segments_share_parameters_and_chain_reproduces_predict():
    net = _network()
    x = torch.randn(37, 1, 8, 8)
    net.thresholds = _spread_thresholds(net, x)
    segments = net.segments()
    assert len(segments) == 3 and all(isinstance(s, EarlyExitNetworkSegmentor) for s in segments)
    assert segments[0].block is net.blocks[0] and segments[0].exit_head is net.exits[0]
    assert segments[2].exit_head is None and segments[2].is_last
    net.eval()
    preds = torch.full((37,), -1, dtype=torch.long)
    exits = torch.full((37,), -1, dtype=torch.long)
    remaining, h = torch.arange(37), x
    with torch.no_grad():
        for index, segment in enumerate(segments):
            logits, exited, features = segment(h)
            assert logits.shape == (len(remaining), NUM_CLASSES) and exited.dtype == torch.bool
            preds[remaining[exited]] = logits[exited].argmax(-1)
            exits[remaining[exited]] = index
            remaining = remaining[~exited]
            if segment.is_last:
                assert features is None and bool(exited.all())
            else:
                assert features.shape == (len(remaining), *net.block_output_shapes[index])
            h = features
    expected = net.predict(x)
    assert torch.equal(preds, expected.predictions) and torch.equal(exits, expected.exit_index)


def test_modules_are_picklable():
    net = _network()
    clone = pickle.loads(pickle.dumps(net))
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(clone.predict(x).predictions, net.predict(x).predictions)
    assert len(pickle.loads(pickle.dumps(net.segments()))) == 3


def test_confidence_scores():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [50.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0]])
    torch.testing.assert_close(confidence_scores(logits, "max_prob"), torch.softmax(logits, -1).max(-1).values)
    p = torch.softmax(logits, -1)
    entropy = -(p * p.log()).sum(-1)
    torch.testing.assert_close(confidence_scores(logits, "entropy"), 1 - entropy / math.log(4))
    assert confidence_scores(logits, "entropy")[0].item() == pytest.approx(0.0, abs=1e-6)
    assert confidence_scores(logits, "entropy")[1].item() == pytest.approx(1.0, abs=1e-6)


def test_exit_macs_of_a_linear_model_and_average():
    model = nn.Sequential(nn.Linear(10, 20), nn.Sequential(nn.ReLU(), nn.Linear(20, 30)), nn.Linear(30, 4))
    net = EarlyExitNetwork(model, (7, 10), [[5], []], [0.5, 0.5])
    head0, head1 = 20 * 5 + 5 * 4, 30 * 4
    assert exit_macs(net) == [200 + head0, 200 + head0 + 600 + head1, 200 + head0 + 600 + head1 + 120]
    net.thresholds = [1.0, 0.5]  # predict skips head 0: nobody pays for it
    assert exit_macs(net) == [200 + head0, 200 + 600 + head1, 200 + 600 + head1 + 120]
    assert average_macs(torch.tensor([0, 2, 2, 2]), [10, 20, 30]) == pytest.approx(25.0)
    conv = exit_macs(_network())
    assert conv[0] < conv[1] < conv[2]
    with pytest.raises(ValueError, match="Expected `exit_index` to be a non-empty"):
        average_macs(torch.tensor([], dtype=torch.long), [1, 2])


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("neurons", [[[8]], [[8], [8], [8]], 0, [8, 8], "8"])
def test_bad_neurons_in_exit_layers(neurons):
    with pytest.raises(ValueError, match=r"Expected `neurons_in_exit_layers` to be .* list of 2 lists"):
        EarlyExitNetwork(_conv_blocks(), INPUT_SHAPE, neurons, [0.5, 0.5])


@pytest.mark.parametrize(
    "thresholds", [[0.5], [0.5, 0.5, 0.5], [0.0, 0.5], [0.5, 1.5], [float("nan"), 0.5], [True, 0.5]]
)
def test_bad_thresholds(thresholds):
    with pytest.raises(ValueError, match=r"Expected `thresholds` to be 2 number\(s\) in \(0, 1\]"):
        EarlyExitNetwork(_conv_blocks(), INPUT_SHAPE, 8, thresholds)
    net = _network()
    with pytest.raises(ValueError, match="Expected `thresholds`"):
        net.thresholds = thresholds
    assert net.thresholds == [0.5, 0.5]


def test_model_without_net_that_is_not_sequential():
    with pytest.raises(ValueError, match=r"Expected `model` to be an nn.Sequential of blocks or a module whose `net`"):
        EarlyExitNetwork(nn.Linear(4, 2), (1, 4), 8, [])
    with pytest.raises(ValueError, match="at least 2 blocks"):
        EarlyExitNetwork(nn.Sequential(nn.Linear(4, 2)), (1, 4), 8, [])


@pytest.mark.parametrize("input_shape", [(1, 3, 8, 8), (1, 1, 9, 9), (1, 1, 8)])
def test_input_shape_that_does_not_fit(input_shape):
    with pytest.raises(ValueError, match=r"Expected `input_shape` to fit the model, but got .*block \d raised"):
        EarlyExitNetwork(_conv_blocks(), input_shape, 8, [0.5, 0.5])


@pytest.mark.parametrize("input_shape", [(1, 0, 8, 8), "1x8", (), (1.5, 2)])
def test_malformed_input_shape(input_shape):
    with pytest.raises(ValueError, match="Expected `input_shape` to be a sequence of positive ints"):
        EarlyExitNetwork(_conv_blocks(), input_shape, 8, [0.5, 0.5])


def test_last_block_must_return_logits_and_confidence_must_be_known():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 3))
    with pytest.raises(ValueError, match=r"Expected the last block of `model` to return logits of shape \(B, C\)"):
        EarlyExitNetwork(model, INPUT_SHAPE, 8, [0.5])
    with pytest.raises(ValueError, match=r"Expected `confidence` to be one of \('max_prob', 'entropy'\)"):
        EarlyExitNetwork(_conv_blocks(), INPUT_SHAPE, 8, [0.5, 0.5], confidence="margin")
    with pytest.raises(ValueError, match="Expected `threshold` to be a number in"):
        EarlyExitNetworkSegmentor(nn.Linear(2, 2), nn.Linear(2, 2), 0.0, "max_prob", False)
