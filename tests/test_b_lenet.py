"""B-LeNet (BranchyNet's exit placement) and the batched ``predict`` on it: shares, registry, bad input, exactness."""

from __future__ import annotations

import pytest
import torch

from kd_toolkit.early_exit import EarlyExitNetwork, exit_macs
from kd_toolkit.early_exit.cost import mac_parts
from kd_toolkit.early_exit.models import BLeNet
from kd_toolkit.models import create_model, list_models


def _network(thresholds):
    torch.manual_seed(0)
    return EarlyExitNetwork(create_model("b_lenet"), (1, 1, 28, 28), [[32], []], thresholds).eval()


def test_registered_and_shaped_for_mnist():
    assert "b_lenet" in list_models() and isinstance(create_model("b_lenet"), BLeNet)
    model = BLeNet(channels=(4, 8, 16), hidden=32)
    assert len(model.net) == 3 and model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert BLeNet(image_size=32)(torch.zeros(2, 1, 32, 32)).shape == (2, 10)


def test_block_0_and_exit_0_are_a_small_part_of_the_work():
    blocks, heads = mac_parts(_network([0.5, 0.5]))
    assert (blocks[0] + heads[0]) / sum(blocks) < 0.05  # BranchyNet: the first exit comes after a cheap stage


@pytest.mark.parametrize("channels", [(4, 8), (4, 8, 0), "abc", (4, 8.0, 16)])
def test_bad_channels(channels):
    with pytest.raises(ValueError, match="Expected `channels` to be 3 positive ints"):
        BLeNet(channels=channels)


@pytest.mark.parametrize("thresholds", [[1e-6, 0.5], [0.3, 0.2], [0.999999, 0.999999], [1.0, 1.0], [0.2, 1.0]])
def test_predict_equals_one_sample_at_a_time(thresholds):
    """Batched predict (shrinking batch, index_select, scatter back) equals walking each sample through the exits."""
    net = _network(thresholds)
    x = torch.randn(37, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    batched = net.predict(x)
    for i in range(len(x)):
        one = net.predict(x[i : i + 1])
        assert int(one.exit_index) == int(batched.exit_index[i]) and int(one.predictions) == int(batched.predictions[i])
        torch.testing.assert_close(one.logits[0], batched.logits[i], rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        outputs = net(x)  # every exit's logits
    picked = torch.stack([outputs[k][i] for i, k in enumerate(batched.exit_index.tolist())])
    torch.testing.assert_close(batched.logits, picked, rtol=1e-5, atol=1e-5)
    assert batched.exit_index.dtype == torch.long and len(exit_macs(net)) == 3


def test_predict_restores_flags_after_train_and_eval():
    net = _network([0.5, 0.5])
    net.train()
    net.predict(torch.randn(4, 1, 28, 28))
    assert all(m.training for m in net.modules())
    net.exits[0][1].eval()  # one submodule in eval mode on its own stays so
    net.predict(torch.randn(4, 1, 28, 28))
    assert not net.exits[0][1].training and net.blocks[0].training
