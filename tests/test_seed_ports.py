"""Ports of the original projects' own demo programs (seeds 001, its predecessor, and 002), changed only as a
migrating user would change them: the import line, local data instead of a download, the CPU, fewer epochs.

* levgiorg/KnowledgeDistillation ``demo.py`` and Ilias-Paralikas/Knowldedge_Distillation ``demo.py`` (seed 001);
* georgian-io/Knowledge-Distillation-Toolkit ``examples/resnet_compression_demo`` (seed 002).
"""

from __future__ import annotations

from collections import ChainMap

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml
from torch.utils.data import DataLoader, Dataset
from torchvision.models.resnet import BasicBlock, ResNet

from tests.conftest import digits_tensors


# ------------------------------------------------------------------------------------------------- seed 001
class DummyDataset(Dataset):
    """As in both seed-001 demos (random images and labels), on 8x8 single-channel images."""

    def __init__(self, size=100, num_features=10):
        self.size = size

    def __len__(self):
        return self.size

    def __getitem__(self, idx):
        return torch.randn(1, 8, 8), torch.randint(0, 10, ())


class StudentModel(nn.Module):
    """The demo's StudentModel (conv blocks in ``self.net``, then a flattening MLP), sized for 8x8 inputs."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(self.create_block(1, 8), self.create_block(8, 16),
                                 nn.Sequential(nn.Flatten(), nn.Linear(16 * 8 * 8, 32), nn.ReLU(True), nn.Linear(32, 10)))

    def forward(self, x):
        return self.net(x)

    def create_block(self, in_channels, filters, kernel_size=3, padding=1):
        return nn.Sequential(nn.Conv2d(in_channels, filters, kernel_size, padding=padding), nn.BatchNorm2d(filters),
                             nn.ReLU(True))


def test_seed_001_demo_runs_with_only_the_import_changed():
    from knowledge_distilation import knowledge_distillation_train  # the demo's own import line

    torch.manual_seed(0)
    student = StudentModel()
    teacher = StudentModel()  # the demo's teacher comes from torch.hub; a local model here
    dummy_dataset = DummyDataset()
    trainloader = DataLoader(dummy_dataset, batch_size=8, shuffle=True)
    optimizer = torch.optim.Adam(student.parameters(), lr=0.001)
    epoch_loss = knowledge_distillation_train(teacher,
                                              student,
                                              trainloader=trainloader,
                                              criterion=nn.CrossEntropyLoss(),
                                              optimizer=optimizer,
                                              teacher_percentage=1,
                                              temperature=1,
                                              device="cpu")
    assert isinstance(epoch_loss, float) and epoch_loss >= 0
    assert optimizer.state[next(iter(student.parameters()))]["step"] == len(trainloader)  # the caller's optimizer


def test_seed_001_positional_order():
    from knowledge_distilation.knowledge_distilation_train_function import knowledge_distillation_train

    student = StudentModel()
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01)
    loss = knowledge_distillation_train(StudentModel(), student, DataLoader(DummyDataset(16), batch_size=8),
                                        nn.CrossEntropyLoss(), optimizer, 0.5, 2.0, "cpu")
    assert isinstance(loss, float)


def test_seed_001_predecessor_demo_returns_model_and_losses(capsys):
    from knowledge_distilation import knowledge_distillation_train

    torch.manual_seed(0)
    student = StudentModel()
    teacher = StudentModel()
    epochs = 2
    dummy_dataset = DummyDataset()
    trainloader = DataLoader(dummy_dataset, batch_size=10, shuffle=True)
    optimizer_params = {"lr": 0.001}
    new_model, training_losses = knowledge_distillation_train(teacher,
                                                              student,
                                                              n_epochs=epochs,
                                                              trainloader=trainloader,
                                                              criterion=nn.CrossEntropyLoss(),
                                                              optimizer=torch.optim.Adam,
                                                              optimizer_params=optimizer_params,
                                                              teacher_percentage=1,
                                                              temperature=1)
    assert isinstance(new_model, StudentModel) and new_model is not student  # a copy, as the original returns
    assert isinstance(training_losses, list) and len(training_losses) == epochs
    assert all(isinstance(v, float) and v > 0 for v in training_losses)
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Training Loss: ")]
    assert len(printed) == epochs  # the original prints each epoch's loss
    for a, b in zip(new_model.state_dict().values(), student.state_dict().values()):
        assert torch.equal(a, b)  # the student was trained in place, and the copy equals it


def test_seed_001_predecessor_positional_order_and_package_path():
    from knowledge_distilation.kd import knowledge_distillation_train  # the predecessor's module

    model, losses = knowledge_distillation_train(StudentModel(), StudentModel(), 1, DataLoader(DummyDataset(20), 10),
                                                 nn.CrossEntropyLoss(), torch.optim.SGD, {"lr": 0.01, "momentum": 0.9},
                                                 0.5, 2)
    assert isinstance(model, nn.Module) and len(losses) == 1


def test_mixing_the_call_forms_is_a_clear_error():
    from knowledge_distilation import knowledge_distillation_train

    with pytest.raises(ValueError, match="optimizer class"):
        knowledge_distillation_train(StudentModel(), StudentModel(), n_epochs=1, trainloader=DataLoader(DummyDataset(4)),
                                     criterion=nn.CrossEntropyLoss(), optimizer=torch.optim.Adam(StudentModel().parameters()),
                                     optimizer_params={})


# ------------------------------------------------------------------------------------------------- seed 002
DEMO_CONFIG = """
knowledge_distillation:
   general:
        num_gpu_used: 0
        temperature: 1
   optimization:
        max_epoch: 2
        optimize_method: "adam"
        scheduler_method: ""
        learning_rate: 0.003
        num_lr_warm_up_epoch: 0
   final_loss_coeff:
        kd_loss: 1
        cos_embed_loss: 0
   pytorch_lightning_trainer:
        track_grad_norm: 2
        accumulate_grad_batches: 1
        num_nodes: 1
        precision: 16
        resume_from_checkpoint: ""
   comet_info:
        log_to_comet: False
        comet_info_path: "/home/comet_api.txt"
        comet_exp_name: ""
"""


class _DemoResNet(ResNet):
    """The demo's models: a ResNet with a 1-channel stem whose forward returns logits, prob and log_prob
    (with the demo's softmax over dim 0, the batch: harmless here, kd_toolkit reads the logits)."""

    def __init__(self, layers):
        super().__init__(BasicBlock, layers, num_classes=10)
        self.conv1 = torch.nn.Conv2d(1, 64, kernel_size=(7, 7), stride=(2, 2), padding=(3, 3), bias=False)

    def forward(self, batch, temperature=1):
        logits = super().forward(batch)
        logits = logits / temperature
        prob = F.softmax(logits, dim=0)
        log_prob = F.log_softmax(logits, dim=0)
        return {"logits": logits, "prob": prob, "log_prob": log_prob}


class inference_pipeline:
    def __init__(self, device):
        self.device = device

    def run_inference_pipeline(self, model, data_loader):
        accuracy = 0
        model.eval()
        with torch.no_grad():
            for data in data_loader:
                X, y = data[0].to(self.device), data[1].to(self.device)
                outputs = model(X)
                predicted = torch.max(outputs["prob"], 1)[1]
                accuracy += predicted.eq(y.view_as(predicted)).sum().item()
        accuracy = accuracy / len(data_loader.dataset)
        return {"inference_result": accuracy}


def get_data_for_kd_training(batch):
    data = torch.cat([sample[0] for sample in batch], dim=0)
    data = data.unsqueeze(1)
    return (data,)  # no labels: the demo distils on kd_loss alone


def test_seed_002_resnet_demo_runs_with_only_the_import_changed(tmp_path, monkeypatch):
    from kd_toolkit import KnowledgeDistillationTraining  # was: from knowledge_distillation.kd_training import ...

    monkeypatch.chdir(tmp_path)
    config = yaml.safe_load(DEMO_CONFIG)
    x, y = digits_tensors()
    train_dataset = list(zip(x[:256], y[:256]))  # local data instead of torchvision's MNIST download
    test_dataset = list(zip(x[1500:1700], y[1500:1700]))
    train_data_loader = DataLoader(train_dataset, collate_fn=get_data_for_kd_training, batch_size=64, num_workers=0)
    test_loader = DataLoader(test_dataset, batch_size=100, num_workers=0)
    val_data_loaders = {"mnist_test": test_loader}
    inference_pipeline_example = inference_pipeline(torch.device("cpu"))
    torch.manual_seed(0)
    student_model = _DemoResNet([1, 1, 1, 1])
    teacher_model = _DemoResNet([1, 1, 1, 1])
    kd_resnet = KnowledgeDistillationTraining(
        train_data_loader=train_data_loader,
        val_data_loaders=val_data_loaders,
        inference_pipeline=inference_pipeline_example,
        student_model=student_model,
        teacher_model=teacher_model,
        num_gpu_used=config["knowledge_distillation"]["general"]["num_gpu_used"],
        temperature=config["knowledge_distillation"]["general"]["temperature"],
        final_loss_coeff_dict=config["knowledge_distillation"]["final_loss_coeff"],
        logging_param=ChainMap(config["knowledge_distillation"]["general"],
                               config["knowledge_distillation"]["optimization"],
                               config["knowledge_distillation"]["final_loss_coeff"],
                               config["knowledge_distillation"]["pytorch_lightning_trainer"]),
        **ChainMap(config["knowledge_distillation"]["optimization"],
                   config["knowledge_distillation"]["pytorch_lightning_trainer"],
                   config["knowledge_distillation"]["comet_info"]),
    )
    kd_resnet.start_kd_training()
    student_model = kd_resnet.get_student_model()
    assert isinstance(student_model, _DemoResNet)
    assert "mnist_test" in kd_resnet.trainer.callback_metrics  # the pipeline's result, under the loader's name
    assert "kd_loss_epoch" in kd_resnet.trainer.callback_metrics
    assert "hard_loss_epoch" not in kd_resnet.trainer.callback_metrics  # weight absent: never computed
    assert kd_resnet.trainer.precision == "32-true"  # precision 16 on a machine without a GPU


def test_seed_002_positional_order_and_defaults():
    import inspect

    from kd_toolkit import KnowledgeDistillationTraining

    names = list(inspect.signature(KnowledgeDistillationTraining).parameters)[:25]
    assert names == ["num_gpu_used", "max_epoch", "optimize_method", "scheduler_method", "learning_rate",
                     "num_lr_warm_up_epoch", "final_loss_coeff_dict", "log_to_comet", "comet_info_path",
                     "comet_exp_name", "temperature", "seed", "track_grad_norm", "accumulate_grad_batches",
                     "accelerator", "num_nodes", "precision", "deterministic", "resume_from_checkpoint",
                     "train_data_loader", "val_data_loaders", "inference_pipeline", "student_model", "teacher_model",
                     "logging_param"]
    defaults = {k: p.default for k, p in inspect.signature(KnowledgeDistillationTraining).parameters.items()}
    assert (defaults["num_gpu_used"], defaults["learning_rate"], defaults["temperature"], defaults["precision"],
            defaults["seed"], defaults["track_grad_norm"]) == (0, 1e-4, 1.0, 16, 32, 2)
    x, y = digits_tensors()
    loader = DataLoader(list(zip(x[:64], y[:64])), batch_size=32)
    kd = KnowledgeDistillationTraining(0, 1, "sgd", "", 0.01, 0, {"kd_loss": 1}, False, "", "", 2, 32, 2, 1, None,
                                       1, 32, True, None, loader, None, None, StudentModel(), StudentModel(), None,
                                       quiet=True, enable_progress_bar=False)
    assert kd.module.loss_weights == {"kd_loss": 1.0} and kd.module.temperature == 2.0 and kd.module.lr == 0.01
