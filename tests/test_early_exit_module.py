"""Tests for EarlyExitModule: what each training method trains, losses, metrics, checkpoints, YAML, bad input."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from kd_toolkit.early_exit import EarlyExitNetwork, EarlyExitPrediction, average_macs, exit_macs
from kd_toolkit.early_exit.models import SplitCNN
from kd_toolkit.early_exit.module import EarlyExitModule
from kd_toolkit.losses import multi_exit_loss

ROOT = Path(__file__).resolve().parents[1]


def _network(thresholds=(0.6, 0.6), channels=(8, 8, 16), seed=0) -> EarlyExitNetwork:
    torch.manual_seed(seed)
    return EarlyExitNetwork(SplitCNN(channels=channels), (1, 1, 8, 8), [[16]] * (len(channels) - 1), list(thresholds))


def _trainer(**kwargs) -> pl.Trainer:
    options = dict(max_epochs=1, limit_train_batches=4, limit_val_batches=2, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    return pl.Trainer(**{**options, **kwargs})


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers (BatchNorm running statistics included)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], module: nn.Module) -> bool:
    return any(not torch.equal(before[k], v) for k, v in module.state_dict().items())


def _fit_and_compare(method, loaders, **kwargs):
    net = _network()
    parts = {f"block_{i}": b for i, b in enumerate(net.blocks)} | {f"exit_{i}": e for i, e in enumerate(net.exits)}
    before = {name: _snapshot(m) for name, m in parts.items()}
    module = EarlyExitModule(net, training_method=method, optimizer="sgd", lr=0.1, **kwargs)
    _trainer().fit(module, loaders("train", shuffle=True))
    return module, {name: _changed(before[name], m) for name, m in parts.items()}


def test_whole_network_trains_blocks_and_exits(loaders):
    module, changed = _fit_and_compare("whole_network", loaders)
    assert all(changed.values()), changed
    assert module.loss_weights == pytest.approx({"exit_0_loss": 1 / 3, "exit_1_loss": 1 / 3, "exit_2_loss": 1 / 3})


def test_all_exits_leaves_blocks_and_their_batchnorm_statistics_unchanged(loaders):
    module, changed = _fit_and_compare("all_exits", loaders)
    assert changed == {"block_0": False, "block_1": False, "block_2": False, "exit_0": True, "exit_1": True}
    assert set(module.loss_weights) == {"exit_0_loss", "exit_1_loss"}  # the frozen final exit is not in the loss
    assert all(p.requires_grad for p in module.network.parameters())  # flags restored after fit
    assert module.trainer.callback_metrics.keys() >= {"exit_0_loss_epoch", "exit_1_loss_epoch", "train_loss_epoch"}
    assert "exit_2_loss_epoch" not in module.trainer.callback_metrics
    optimised = {id(p) for group in module.trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimised == {id(p) for p in module.network.exits.parameters()}


def test_frozen_blocks_stay_in_eval_mode_while_exits_train(loaders):
    module = EarlyExitModule(_network(), training_method="all_exits")
    seen = {}

    class Probe(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen["blocks"] = [m.training for block in pl_module.network.blocks for m in block.modules()]
            seen["exits"] = [m.training for m in pl_module.network.exits.modules()]

    _trainer(limit_train_batches=1, callbacks=[Probe()]).fit(module, loaders("train"))
    assert not any(seen["blocks"]) and all(seen["exits"])


@pytest.mark.parametrize("k, trains", [(0, "exit_0"), (2, "block_2")])
def test_int_training_method_trains_only_that_exit(loaders, k, trains):
    module, changed = _fit_and_compare(k, loaders)
    assert [name for name, flag in changed.items() if flag] == [trains]
    assert set(module.loss_weights) == {f"exit_{k}_loss"}


def test_loss_components_are_the_weighted_exit_losses(digits):
    torch.manual_seed(0)
    net = _network()
    module = EarlyExitModule(net, exit_weights=[1.0, 0.0, 3.0])
    x, y = digits["train"][0][:32], digits["train"][1][:32]
    components = module.loss_components(x, y, None)
    assert set(components) == {"exit_0_loss", "exit_1_loss", "exit_2_loss"}
    outputs = net(x)
    expected = [nn.functional.cross_entropy(out, y) for out in outputs]
    for i in range(3):
        torch.testing.assert_close(components[f"exit_{i}_loss"], expected[i])
    total = sum(module.loss_weights[k] * v for k, v in components.items())
    torch.testing.assert_close(total, multi_exit_loss(outputs, y, [1.0, 0.0, 3.0])[0])
    assert module.loss_weights == {"exit_0_loss": 0.25, "exit_1_loss": 0.0, "exit_2_loss": 0.75}


def test_self_distillation_component_matches_the_formula_and_spares_the_final_block(digits):
    torch.manual_seed(0)
    net = _network(thresholds=[0.9], channels=(8, 16))
    module = EarlyExitModule(net, self_distillation=True, distill_temperature=2.0, distill_weight=0.3)
    x, y = digits["train"][0][:32], digits["train"][1][:32]
    components = module.loss_components(x, y, None)
    early, final = net(x)
    t = 2.0
    kl = nn.functional.kl_div(nn.functional.log_softmax(early / t, -1), nn.functional.softmax(final / t, -1),
                              reduction="batchmean") * t * t
    torch.testing.assert_close(components["self_distill_loss"], kl.detach())
    torch.testing.assert_close(components["exit_0_loss"], 0.7 * nn.functional.cross_entropy(early, y) + 0.3 * kl)
    torch.testing.assert_close(components["exit_1_loss"], nn.functional.cross_entropy(final, y))
    # the final exit is a teacher only through its detached logits: exit 0's loss gives the last block no gradient
    grads = torch.autograd.grad(components["exit_0_loss"], list(net.blocks[-1].parameters()), allow_unused=True)
    assert all(g is None for g in grads)
    off = EarlyExitModule(net).loss_components(x, y, None)
    assert "self_distill_loss" not in off


def test_validation_metrics_match_batched_predict(loaders):
    net = _network(thresholds=[0.3, 0.3])
    module = EarlyExitModule(net)
    val = {"a": loaders("val"), "b": loaders("test")}
    _trainer(limit_val_batches=1.0).fit(module, loaders("train", shuffle=True), val)
    metrics = {k: float(v) for k, v in module.trainer.callback_metrics.items()}
    for name in ("a", "b"):
        keys = {f"val_exit_{i}_{kind}_{name}" for i in range(3) for kind in ("acc", "share")}
        assert keys | {f"val_{k}_{name}" for k in ("early_exit_acc", "avg_macs", "relative_macs", "acc", "loss")} <= set(metrics)
    assert metrics["val_acc"] == metrics["val_acc_a"] == metrics["val_exit_2_acc_a"]
    assert sum(metrics[f"val_exit_{i}_share_a"] for i in range(3)) == pytest.approx(1.0)
    preds, exits, labels = [], [], []
    for x, y in val["a"]:
        result = net.predict(x)
        preds.append(result.predictions), exits.append(result.exit_index), labels.append(y)
    preds, exits, labels = torch.cat(preds), torch.cat(exits), torch.cat(labels)
    assert metrics["val_early_exit_acc_a"] == pytest.approx((preds == labels).float().mean().item(), abs=1e-6)
    for i in range(3):
        assert metrics[f"val_exit_{i}_share_a"] == pytest.approx((exits == i).float().mean().item(), abs=1e-6)
    macs = average_macs(exits, exit_macs(net))
    assert metrics["val_avg_macs_a"] == pytest.approx(macs, rel=1e-5)
    assert metrics["val_relative_macs_a"] == pytest.approx(macs / exit_macs(_network(thresholds=[1.0, 1.0]))[-1], rel=1e-5)
    out = _trainer().predict(module, loaders("val"))
    assert isinstance(out[0], EarlyExitPrediction)


def test_thresholds_survive_the_checkpoint(loaders, tmp_path):
    module = EarlyExitModule(_network(thresholds=[0.7, 0.85]), training_method="all_exits", optimizer=torch.optim.SGD,
                             lr=0.1)
    trainer = _trainer()
    trainer.fit(module, loaders("train"))
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, map_location="cpu", weights_only=True)  # plain types only
    assert saved["hyper_parameters"]["optimizer_name"] == "SGD" and "optimizer" not in saved["hyper_parameters"]
    fresh = _network(thresholds=[0.5, 0.5], seed=1)
    restored = EarlyExitModule.load_from_checkpoint(path, network=fresh)
    assert fresh.thresholds == [0.7, 0.85] and restored.hparams.training_method == "all_exits"
    assert restored.lr == 0.1  # a class optimizer is named, not rebuilt: pass `optimizer=` to load it again
    for (name, a), b in zip(module.network.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("method", ["everything", "Whole_network", -1, 3, True, False, 1.0, None])
def test_bad_training_method(method):
    with pytest.raises(ValueError, match=r"Expected `training_method` to be one of \('whole_network', 'all_exits'\) "
                                         r"or an exit index int in \[0, 2\]"):
        EarlyExitModule(_network(), training_method=method)


def test_other_bad_arguments():
    with pytest.raises(ValueError, match="Expected `network` to be a kd_toolkit.early_exit.EarlyExitNetwork"):
        EarlyExitModule(SplitCNN())
    with pytest.raises(ValueError, match=r"Expected `exit_weights` to be 3 finite numbers >= 0"):
        EarlyExitModule(_network(), exit_weights=[1.0, 1.0])
    with pytest.raises(ValueError, match=r"positive sum over the trained exits \[0, 1\]"):
        EarlyExitModule(_network(), training_method="all_exits", exit_weights=[0.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="Expected `distill_temperature` to be a positive float"):
        EarlyExitModule(_network(), self_distillation=True, distill_temperature=0.0)
    with pytest.raises(ValueError, match=r"Expected `distill_weight` to be a float in \[0, 1\]"):
        EarlyExitModule(_network(), distill_weight=1.5)
    with pytest.raises(ValueError, match="Expected `self_distillation` to be a bool"):
        EarlyExitModule(_network(), self_distillation="yes")
    with pytest.raises(ValueError, match="Expected `channels` to be at least 2 positive ints"):
        SplitCNN(channels=[8])


def test_yaml_config_with_lightning_cli(monkeypatch):
    from pytorch_lightning.cli import LightningCLI

    monkeypatch.chdir(ROOT)  # the YAML is found relative to the repository root
    monkeypatch.setattr(sys, "argv", ["kd-toolkit"])  # pytest's own arguments are not for the CLI
    args = ["fit", "--config", "configs/early_exit_digits.yaml", "--trainer.fast_dev_run=true",
            "--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
    cli = LightningCLI(pl.LightningModule, pl.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                       args=args)
    assert isinstance(cli.model, EarlyExitModule) and isinstance(cli.model.network.blocks[0][0], nn.Conv2d)
    assert cli.model.self_distillation and cli.model.network.thresholds == [0.95, 0.95]
    assert {"train_loss", "self_distill_loss", "val_early_exit_acc", "val_exit_1_share"} <= set(cli.trainer.callback_metrics)
    cli = LightningCLI(pl.LightningModule, pl.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                       args=["--config", "configs/early_exit_digits.yaml", "--model.init_args.training_method=1"],
                       run=False)
    assert cli.model.training_method == 1 and cli.model.trained_exits == [1]
