"""Fine-tuning (--init, --freeze-backbone, --backbone-lr-scale), the finetune and imagenet
recipes, and two processes under torchrun. Tiny models and the tiny CIFAR slice."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reslab import create_model
from reslab.checkpoint import make_card, save_model
from reslab.cli import main
from reslab.errors import CheckpointError
from reslab.inference.interop import export_state_dict
from reslab.train import TrainConfig
from reslab.train.init import classifier_names, freeze_backbone, init_from
from reslab.train.schedules import LearningRate
from reslab.train.trainer import build_optimizer, parameter_groups

REPO = Path(__file__).resolve().parents[1]
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def trained_looking(name: str, seed: int = 1, **options) -> torch.nn.Module:
    """A model whose weights and BN statistics differ from a fresh one's (so copies can be told apart)."""
    torch.manual_seed(seed)
    model = create_model(name, **options)
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
    return model


def reslab_file(model: torch.nn.Module, name: str, path: Path, class_names=None) -> Path:
    save_model(path, model, make_card(name, model, class_names=class_names))
    return path


def assert_backbone_equal(model: torch.nn.Module, source: torch.nn.Module) -> None:
    head = set(classifier_names(model))
    mine, theirs = model.state_dict(), source.state_dict()
    assert set(mine) == set(theirs)
    different = [k for k in mine if k not in head and not torch.equal(mine[k], theirs[k])]
    assert not different, different[:5]


# ------------------------------------------------------------------------------------------
# init_from


def test_init_from_a_reslab_checkpoint_remakes_the_classifier_for_other_classes(tmp_path):
    source = trained_looking("resnet20")
    path = reslab_file(source, "resnet20", tmp_path / "r20.safetensors", CIFAR_CLASSES)
    model = create_model("resnet20", num_classes=5)
    fresh_fc = model.fc.weight.detach().clone()
    report = init_from(model, path, CIFAR_CLASSES[:5])
    assert_backbone_equal(model, source)
    assert model.fc.weight.shape == (5, 64) and torch.equal(model.fc.weight, fresh_fc)
    assert report.new == ("fc.weight", "fc.bias") and report.loaded == len(source.state_dict()) - 2
    assert report.describe() == (f"init: {report.loaded} tensors from {path} (reslab: resnet20); "
                                 "new: fc.weight, fc.bias (10 -> 5 classes)")


def test_init_keeps_the_classifier_of_the_same_classes_and_remakes_it_for_other_names(tmp_path):
    source = trained_looking("resnet20", num_classes=5)
    path = reslab_file(source, "resnet20", tmp_path / "r20.safetensors", CIFAR_CLASSES[5:])
    same = create_model("resnet20", num_classes=5)
    assert init_from(same, path, CIFAR_CLASSES[5:]).new == ()
    assert torch.equal(same.fc.weight, source.fc.weight)
    other = create_model("resnet20", num_classes=5)
    report = init_from(other, path, CIFAR_CLASSES[:5])  # as many classes, but others: the old head means nothing
    assert report.new == ("fc.weight", "fc.bias") and not torch.equal(other.fc.weight, source.fc.weight)
    assert "5 classes, other than the source's" in report.describe()
    assert_backbone_equal(other, source)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_init_from_a_torchvision_state_dict(tmp_path, suffix):
    source = trained_looking("resnet18")  # 1000 classes, torchvision's layout and names
    path = export_state_dict(source, tmp_path / f"resnet18{suffix}", "torchvision")
    model = create_model("resnet18", num_classes=3)
    report = init_from(model, path)
    assert_backbone_equal(model, source)
    assert model.fc.weight.shape == (3, 512)
    assert "(torchvision/timm layout); new: fc.weight, fc.bias (1000 -> 3 classes)" in report.describe()


def test_init_from_a_registry_name_uses_the_shipped_weights():
    model = create_model("resnet20", num_classes=4)
    report = init_from(model, "resnet20")
    assert_backbone_equal(model, create_model("resnet20", pretrained=True))
    assert report.layout == "reslab: resnet20" and report.source_classes == 10 and model.fc.out_features == 4


def test_init_errors_name_the_mismatch_and_the_missing_file(tmp_path):
    path = reslab_file(trained_looking("resnet20"), "resnet20", tmp_path / "r20.safetensors")
    with pytest.raises(CheckpointError, match=r"a resnet20 checkpoint\) does not fit ResNet: missing keys: layer1\.3"):
        init_from(create_model("resnet32"), path)
    colour = export_state_dict(trained_looking("resnet18"), tmp_path / "resnet18.pth")
    with pytest.raises(CheckpointError, match=r"torchvision/timm layout state dict\) has tensors of other shapes.*conv1"):
        init_from(create_model("resnet18", in_channels=1), colour)
    with pytest.raises(CheckpointError, match="init: no checkpoint at .*nothing.pth"):
        init_from(create_model("resnet20"), tmp_path / "nothing.pth")
    with pytest.raises(CheckpointError, match="no pretrained weights for 'resnet110'"):
        init_from(create_model("resnet20"), "resnet110")


# ------------------------------------------------------------------------------------------
# Training with --init, --freeze-backbone, --backbone-lr-scale


def test_freeze_backbone_trains_only_the_classifier_and_keeps_bn_statistics(tiny_cifar, tmp_path, capsys):
    source = trained_looking("resnet20")
    path = reslab_file(source, "resnet20", tmp_path / "r20.safetensors", [f"c{i}" for i in range(10)])
    out = tmp_path / "probe"
    code = main(["train", "resnet20", "--recipe", "finetune", "--init", str(path), "--freeze-backbone", "--data",
                 str(tiny_cifar), "--out", str(out), "--epochs", "1", "--batch-size", "50", "--lr", "0.5",
                 "--threads", "1", "--progress", "plain", "--precision", "fp32"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "new: fc.weight, fc.bias (10 classes, other than the source's)" in printed
    assert "frozen backbone (linear probe)" in printed and "19 BN layers" in printed
    trained = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    head = {"fc.weight", "fc.bias"}
    changed = [k for k, v in source.state_dict().items() if k not in head and not torch.equal(trained[k], v)]
    assert not changed, changed[:5]  # weights, running means and variances: all the source's
    assert not torch.equal(trained["fc.weight"], create_model("resnet20").fc.weight)


def test_backbone_lr_scale_gives_the_backbone_its_share_of_the_rate():
    model = create_model("resnet20", num_classes=5)
    config = TrainConfig.from_recipe("finetune", model="resnet20", backbone_lr_scale=0.1)
    groups = parameter_groups(model, 1e-4, decay_norm_and_bias=False, backbone_lr_scale=0.1)
    assert [g["name"] for g in groups] == ["backbone weights", "classifier weights", "backbone norm_and_bias",
                                           "classifier norm_and_bias"]
    optimizer = build_optimizer(config, groups, 0.01)
    lr = LearningRate(config.build_schedule(10), None).apply(optimizer, 50)
    assert lr == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi * 45 / 95)))  # 5 warm-up iterations of 100
    rates = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert rates["backbone weights"] == pytest.approx(0.1 * lr) and rates["classifier weights"] == lr
    assert rates["backbone norm_and_bias"] == pytest.approx(0.1 * lr) and rates["classifier norm_and_bias"] == lr
    assert len(parameter_groups(model, 1e-4, True)) == 1  # scale 1: the groups as before
    frozen = create_model("resnet20")
    freeze_backbone(frozen)
    assert sum(len(g["params"]) for g in parameter_groups(frozen, 1e-4, True)) == 2  # fc only
    with pytest.raises(ValueError, match="freeze_backbone trains the classifier only"):
        TrainConfig.from_recipe("finetune", freeze_backbone=True, backbone_lr_scale=0.1)


# ------------------------------------------------------------------------------------------
# Recipes


def test_the_imagenet_recipe_is_he_et_al_with_linear_scaling_and_large_batch_warmup():
    config = TrainConfig.from_recipe("imagenet")
    assert (config.batch_size, config.base_batch_size, config.lr, config.momentum, config.weight_decay,
            config.epochs, config.optimizer, config.nesterov) == (256, 256, 0.1, 0.9, 1e-4, 90, "sgd", False)
    schedule = config.build_schedule(100)  # 100 iterations an epoch
    assert schedule.total_iterations == 9000 and schedule.milestones == (3000, 6000, 8000)
    assert [schedule.lr(i) for i in (0, 2999, 3000, 6000, 8999)] == pytest.approx([0.1, 0.1, 0.01, 0.001, 0.0001])
    assert schedule.warmup_iterations == 0 and config.describe_large_batch_warmup() == ""
    big = TrainConfig.from_recipe("imagenet", batch_size=1024)  # scaled, not yet warmed up
    assert big.build_schedule(25).peak_lr == pytest.approx(0.4) and big.build_schedule(25).warmup_iterations == 0
    large = TrainConfig.from_recipe("imagenet", batch_size=2048).build_schedule(10)
    assert large.peak_lr == pytest.approx(0.8) and large.warmup_iterations == 50  # 5 epochs, from 0.1 to 0.8
    assert large.lr(0) == pytest.approx(0.1) and large.lr(25) == pytest.approx(0.45) and large.lr(50) == pytest.approx(0.8)
    assert "from 0.1 to 0.8 over the first 5 epochs" in TrainConfig.from_recipe("imagenet", batch_size=2048).describe_large_batch_warmup()
    own = TrainConfig.from_recipe("imagenet", batch_size=2048, warmup=0.1).build_schedule(10)
    assert own.warmup_iterations == 90  # an explicit --warmup wins


def test_the_finetune_recipe():
    config = TrainConfig.from_recipe("finetune")
    assert (config.lr, config.schedule, config.label_smoothing, config.warmup, config.epochs) == (0.01, "cosine", 0.1, 0.05, 10)
    assert config.init is None and not config.freeze_backbone and config.backbone_lr_scale == 1.0


# ------------------------------------------------------------------------------------------
# Two processes


STOP_SCRIPT = """
import os, signal, sys
from reslab.cli import main
from reslab.train import trainer

class StopAt:  # SIGTERM to this rank after the backward pass of one iteration, on every rank
    def after_backward(self, model, iteration):
        if iteration == int(os.environ["STOP_AT"]):
            os.kill(os.getpid(), signal.SIGTERM)

train = trainer.train
trainer.train = lambda config, extensions=(), **kw: train(config, [StopAt(), *extensions], **kw)
import reslab.train
reslab.train.train = trainer.train
sys.exit(main(sys.argv[1:]))
"""


def test_two_processes_linear_probe_equals_one_process_and_resumes_mid_epoch(tiny_cifar, tmp_path):
    """With frozen BN (a linear probe) and no random augmentation, two ranks' averaged gradients are
    the one-process gradient of the whole batch: a 2-process run launched as on many machines
    (c10d rendezvous), stopped by SIGTERM in the middle of its second epoch and resumed, ends with
    the classifier of an uninterrupted one-process run."""
    from test_train import free_port

    source = reslab_file(trained_looking("resnet20"), "resnet20", tmp_path / "r20.safetensors")
    flags = ["--recipe", "finetune", "--init", str(source), "--freeze-backbone", "--epochs", "2", "--batch-size", "40",
             "--lr", "0.2", "--no-flip", "--crop-padding", "0", "--precision", "fp32", "--threads", "1",
             "--progress", "quiet", "--data", str(tiny_cifar)]
    script = tmp_path / "stop_at.py"
    script.write_text(STOP_SCRIPT)

    def torchrun(*args: str, stop_at: int = -1) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
                   "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "STOP_AT": str(stop_at)})

    ddp = tmp_path / "ddp"
    stopped = torchrun(str(script), "train", "resnet20", "--out", str(ddp), *flags, stop_at=7)  # 5 iterations an epoch
    assert stopped.returncode != 0 and "stopped by SIGTERM after iteration 8" in stopped.stderr, stopped.stderr[-3000:]
    assert torch.load(ddp / "checkpoint.pt", weights_only=True)["progress"]["loader"]["batches_done"] == 3
    resumed = torchrun("-m", "reslab", "train", "--resume", str(ddp), "--progress", "quiet")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    result = json.loads((ddp / "result.json").read_text())
    assert result["ranks_identical"] is True and result["iteration"] == 10
    assert main(["train", "resnet20", "--out", str(tmp_path / "one"), *flags]) == 0
    two, one = (torch.load(tmp_path / run / "checkpoint.pt", weights_only=True)["model"] for run in ("ddp", "one"))
    assert not torch.equal(one["fc.weight"], create_model("resnet20").fc.weight)
    for key in one:
        assert torch.allclose(two[key].float(), one[key].float(), atol=1e-5), key
