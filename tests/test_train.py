"""The trainer on small slices of the real CIFAR-10: learning, files, exact resume, signals,
non-finite losses, full disks, several seeds and two processes. ResNet-20, one thread, a few
dozen iterations per run."""

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from reslab import create_model, load_model, precision, read_checkpoint
from reslab.cli import main
from reslab.errors import ReslabError, TrainingError
from reslab.train import TrainConfig, TrainingInterrupted, train, trainer
from reslab.train.state import read_config
from reslab.train.trainer import describe_groups, parameter_groups

REPO = Path(__file__).resolve().parents[1]


def tiny_config(data: Path, out: Path, **overrides) -> TrainConfig:
    """2 epochs of 6 iterations of 32 images (tiny_cifar has 200 training images), full-size crops."""
    values = dict(model="resnet20", data=str(data), out=str(out), epochs=2, batch_size=32, base_batch_size=32, lr=0.05,
                  threads=1, progress="plain", log_interval=2, tta_flip=False, eval_batch_size=500, eval_interval=1,
                  small_crop=0, small_crop_part=0.0)
    return TrainConfig.from_recipe("fast", **{**values, **overrides})


# A config that uses every source of randomness a resume must restore: the model's own draws
# (stochastic depth per batch, dropout), mixup, and the EMA and momentum state.
STRICT = dict(stochastic_depth=0.7, dropout=0.1, mixup=0.2, ema_decay=0.9)


def final_weights(out: Path) -> dict:
    return torch.load(out / "checkpoint.pt", weights_only=True)["model"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ: {different[:5]}"


def metric_lines(out: Path, name: str = "metrics.jsonl") -> list[dict]:
    return [json.loads(line) for line in (out / name).read_text().splitlines()]


class SignalAt:
    """Sends this process a signal after the backward pass of one iteration or at one epoch's end."""

    def __init__(self, iteration=None, epoch=None, signum=signal.SIGTERM):
        self.iteration, self.epoch, self.signum = iteration, epoch, signum

    def after_backward(self, model, iteration):
        if iteration == self.iteration:
            os.kill(os.getpid(), self.signum)

    def on_epoch_end(self, epoch, metrics):
        if epoch == self.epoch:
            os.kill(os.getpid(), self.signum)


class GradientRecorder:
    """The mean |gradient| of the first block's first convolution, averaged per epoch."""

    def __init__(self):
        self.values = []

    def after_backward(self, model, iteration):
        self.values.append(model.layer1[0].conv1.weight.grad.abs().mean().item())

    def on_epoch_end(self, epoch, metrics):
        mean, self.values = sum(self.values) / len(self.values), []
        return {"first_block_grad": mean}


# ------------------------------------------------------------------------------------------
# One real run on small_cifar, inspected by several tests.


@pytest.fixture(scope="module")
def small_run(small_cifar, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "r20"
    # batch 64 with the fast recipe's lr 0.15 for batch 128: the lr is scaled to 0.075 (and says so)
    config = TrainConfig.from_recipe("fast", model="resnet20", data=str(small_cifar), out=str(out), epochs=2,
                                     batch_size=64, val=200, threads=1, progress="plain", log_interval=5,
                                     eval_interval=1)
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = train(config, extensions=[GradientRecorder()])
    return config, out, result, printed.getvalue()


def test_training_learns_above_chance(small_run):
    _, out, result, _ = small_run
    assert result["test_accuracy"] > 0.2  # 10 classes: chance is 0.1
    steps = metric_lines(out, "steps.jsonl")
    assert steps[-1]["train_error"] < steps[0]["train_error"] - 0.1


def test_start_messages_say_how_lr_was_scaled_and_show_parameter_groups(small_run):
    printed = small_run[3]
    assert "learning rate scaled linearly 0.15 x 64/128 = 0.075" in printed
    assert "parameter groups: weights: 20 tensors, 268,336 parameters, weight decay 0.0005; norm_and_bias: 39 tensors" in printed


def test_metrics_lines_have_every_field(small_run):
    _, out, result, _ = small_run
    lines = metric_lines(out)
    assert [m["epoch"] for m in lines] == [0, 1]
    assert [m["iteration"] for m in lines] == [28, 56]  # 1,800 training images / 64 = 28 batches per epoch
    expected = {"epoch", "iteration", "lr", "train_loss", "train_error", "val_loss", "val_error", "test_loss", "test_error",
                "test_accuracy", "img_per_s", "epoch_seconds", "eval_seconds", "wall_seconds", "skipped_steps", "first_block_grad"}
    assert set(lines[0]) == expected
    assert all(m["first_block_grad"] > 0 and 0 <= m["test_error"] <= 1 for m in lines)
    assert lines[-1]["test_error"] == result["test_error"]  # the reported result is the final epoch's
    assert result["best"]["epoch"] in (0, 1) and "val_error" in result["best"]


def test_steps_lines_log_every_interval(small_run):
    _, out, _, _ = small_run
    steps = metric_lines(out, "steps.jsonl")
    assert [s["iteration"] for s in steps] == list(range(5, 57, 5))
    assert set(steps[0]) == {"iteration", "epoch", "lr", "train_loss", "train_error", "img_per_s", "skipped_steps"}


def test_config_json_round_trips_and_records_the_environment(small_run):
    config, out, _, _ = small_run
    saved = json.loads((out / "config.json").read_text())
    assert read_config(out) == config
    assert {"torch_version", "device", "threads", "reslab_version", "git_commit"} <= set(saved["environment"])
    assert saved["environment"]["threads"] == 1


def test_checkpoint_and_model_files_load_safely(small_run):
    config, out, _, _ = small_run
    state = torch.load(out / "checkpoint.pt", weights_only=True)  # tensors and plain containers only
    assert {"model", "card", "optimizer", "ema", "progress", "rng", "config"} <= set(state)
    weights, card = read_checkpoint(out / "checkpoint.pt")
    assert card.model == "resnet20" and card.class_names == sorted(p.name for p in (Path(config.data) / "train").iterdir())
    model, card = load_model(out, with_card=True)  # model.safetensors
    assert card.config["batch_size"] == 64 and len(card.mean) == 3
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())
    assert (out / "best.safetensors").is_file()


def test_parameter_groups_exclude_bn_and_biases_only_when_asked():

    model = create_model("resnet20")
    split = parameter_groups(model, 5e-4, decay_norm_and_bias=False)
    assert [g["name"] for g in split] == ["weights", "norm_and_bias"]
    assert all(p.ndim > 1 for p in split[0]["params"]) and all(p.ndim == 1 for p in split[1]["params"])
    assert split[1]["weight_decay"] == 0 and id(model.fc.bias) in {id(p) for p in split[1]["params"]}
    assert sum(len(g["params"]) for g in split) == len(list(model.parameters()))
    paper = parameter_groups(model, 1e-4, decay_norm_and_bias=True)
    assert len(paper) == 1 and len(paper[0]["params"]) == len(list(model.parameters()))
    assert "all: 59 tensors, 269,722 parameters, weight decay 0.0001" in describe_groups(paper)


# ------------------------------------------------------------------------------------------
# Resume: stopped and resumed runs end with exactly the weights of an uninterrupted run.


@pytest.fixture(scope="module")
def reference_run(tiny_cifar, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    train(tiny_config(tiny_cifar, out, **STRICT))
    return out


@pytest.mark.parametrize("stop", [SignalAt(iteration=3), SignalAt(epoch=0)], ids=["mid-epoch", "epoch-boundary"])
def test_stop_and_resume_ends_with_the_weights_of_an_uninterrupted_run(tiny_cifar, tmp_path, reference_run, stop):
    config = tiny_config(tiny_cifar, tmp_path / "run", **STRICT)
    with pytest.raises(TrainingInterrupted, match="Continue with: reslab train --resume") as stopped:
        train(config, extensions=[stop])
    assert stopped.value.exit_status == 143
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["progress"]
    assert saved["iteration"] == (4 if stop.iteration == 3 else 6)
    train(read_config(tmp_path / "run"), resume=True)
    assert_same_weights(final_weights(tmp_path / "run"), final_weights(reference_run))
    resumed, reference = metric_lines(tmp_path / "run"), metric_lines(reference_run)
    assert [(m["iteration"], m["train_loss"], m["test_error"]) for m in resumed] == \
           [(m["iteration"], m["train_loss"], m["test_error"]) for m in reference]


def test_sigterm_from_outside_saves_a_checkpoint_and_exits_143(tiny_cifar, tmp_path, reference_run):
    out, ready, sent = tmp_path / "run", tmp_path / "ready", tmp_path / "sent"
    flags = ["--epochs", "2", "--batch-size", "32", "--base-batch-size", "32", "--lr", "0.05", "--threads", "1",
             "--progress", "plain", "--log-interval", "2", "--no-tta-flip", "--eval-batch-size", "500", "--eval-interval", "1",
             "--stochastic-depth", "0.7", "--dropout", "0.1", "--mixup", "0.2", "--ema-decay", "0.9",
             "--small-crop", "0", "--small-crop-part", "0"]  # = tiny_config(**STRICT), the reference run's config
    # The command line, with a callback that waits at iteration 3 until the test has sent SIGTERM.
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        import reslab.train

        class WaitForSignal:
            def after_backward(self, model, iteration):
                if iteration == 3:
                    Path({str(ready)!r}).touch()
                    for _ in range(600):
                        if Path({str(sent)!r}).exists():
                            return
                        time.sleep(0.05)

        real_train = reslab.train.train
        reslab.train.train = lambda config, callbacks=(), **kw: real_train(config, [WaitForSignal(), *callbacks], **kw)
        from reslab.cli import main
        sys.exit(main(["train", "resnet20", "--data", {str(tiny_cifar)!r}, "--out", {str(out)!r}, *{flags!r}]))
        """)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not ready.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    sent.touch()
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert "Traceback" not in stderr and f"Continue with: reslab train --resume {out}" in stderr
    assert torch.load(out / "checkpoint.pt", weights_only=True)["progress"]["iteration"] == 4
    assert main(["train", "--resume", str(out)]) == 0
    assert_same_weights(final_weights(out), final_weights(reference_run))


def test_resume_rejects_flags_that_would_change_the_run(tiny_cifar, tmp_path, capsys, reference_run):
    with pytest.raises(SystemExit) as usage:  # a usage error, as argparse's own: exit status 2, one line
        main(["train", "--resume", str(reference_run), "--lr", "0.2", "--threads", "1"])
    error = capsys.readouterr().err
    assert usage.value.code == 2 and error.count("\n") == 1
    assert "leave out --lr" in error and "allowed with --resume: --threads" in error
    assert main(["train", "--resume", str(reference_run)]) == 0  # a finished run: nothing to do
    assert "finished run" in capsys.readouterr().out


def test_a_copied_run_resumes_in_the_copy_from_any_folder_and_leaves_the_original_alone(
        tiny_cifar, tmp_path, monkeypatch, reference_run):
    started, elsewhere = tmp_path / "started", tmp_path / "elsewhere"
    started.mkdir(), elsewhere.mkdir()
    monkeypatch.chdir(started)  # config.json records the relative out "run", as a user's command would
    with pytest.raises(TrainingInterrupted):
        train(tiny_config(tiny_cifar, Path("run"), **STRICT), extensions=[SignalAt(epoch=0)])
    assert json.loads((started / "run" / "config.json").read_text())["config"]["out"] == "run"
    copy = tmp_path / "moved" / "copy"
    shutil.copytree(started / "run", copy)
    original = {f.name: f.read_bytes() for f in (started / "run").iterdir()}
    monkeypatch.chdir(elsewhere)
    assert main(["train", "--resume", os.path.relpath(copy, elsewhere)]) == 0
    assert {f.name: f.read_bytes() for f in (started / "run").iterdir()} == original  # untouched
    assert not any(elsewhere.iterdir())  # nothing written where the command ran
    assert torch.load(copy / "checkpoint.pt", weights_only=True)["progress"]["finished"]
    assert [m["epoch"] for m in metric_lines(copy)] == [0, 1]
    assert_same_weights(final_weights(copy), final_weights(reference_run))


FIXTURE = REPO / "tests" / "fixtures" / "run-f2ec46c-stopped"  # written by the release before the redesign


def test_a_run_saved_by_the_previous_release_resumes_and_ends_as_it_would_have(tiny_cifar, tmp_path, capsys):
    old = tmp_path / "old-run"
    shutil.copytree(FIXTURE, old)
    assert main(["train", "--resume", str(old), "--data", str(tiny_cifar)]) == 0  # its data was elsewhere then
    reference = [json.loads(line) for line in (FIXTURE / "reference-metrics.jsonl").read_text().splitlines()]
    resumed = metric_lines(old)
    assert [m["iteration"] for m in resumed] == [m["iteration"] for m in reference] == [6, 12]
    for got, want in zip(resumed, reference):
        for key in ("train_loss", "train_error", "test_loss", "test_error"):
            assert got[key] == pytest.approx(want[key], abs=1e-6), key
    assert "resuming at iteration 6 of 12" in capsys.readouterr().out


def test_resume_refuses_a_data_set_with_other_classes(tiny_cifar, tmp_path, capsys):
    other = tmp_path / "other"
    for split in ("train", "test"):
        for name in ("airplane", "cat"):
            shutil.copytree(tiny_cifar / split / name, other / split / ("x" + name))
    old = tmp_path / "old-run"
    shutil.copytree(FIXTURE, old)
    assert main(["train", "--resume", str(old), "--data", str(other)]) == 1
    assert "other classes than the run was trained on" in capsys.readouterr().err


def test_a_data_set_of_one_class_is_refused_in_one_line(tiny_cifar, tmp_path, capsys):
    single = tmp_path / "single"
    for split in ("train", "test"):
        shutil.copytree(tiny_cifar / split / "cat", single / split / "cat")
    assert main(["train", "resnet20", "--data", str(single), "--out", str(tmp_path / "run"), "--epochs", "1"]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the data decoder's progress lines
    assert error.startswith("reslab train: error: ") and "has 1 class (cat): a classifier needs at least 2" in error
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_lr_0_warns_and_messages_count_in_the_singular(tiny_cifar, tmp_path, capsys):
    train(tiny_config(tiny_cifar, tmp_path / "run", epochs=None, iterations=1, lr=0.0))
    printed = capsys.readouterr()
    assert "warning: the learning rate is 0: the weights will not change" in printed.err
    assert "(1 epoch of 6 iterations of 32 images)" in printed.out and "1 thread x 1 process," in printed.out


# ------------------------------------------------------------------------------------------
# Failures: non-finite losses, full disks, unwritable folders.


def poison_loss_at_call(monkeypatch, call: int) -> None:
    from reslab.train import extensions

    real, calls = extensions.mixed_loss, []

    def poisoned(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) == call else loss

    monkeypatch.setattr(extensions, "mixed_loss", poisoned)


def test_a_nonfinite_loss_stops_with_the_iteration_and_the_last_good_checkpoint(tiny_cifar, tmp_path, monkeypatch):
    poison_loss_at_call(monkeypatch, 8)  # iteration 7, in the second epoch
    with pytest.raises(TrainingError, match=r"loss is nan at iteration 7 \(epoch 2\).*checkpoint.pt \(iteration 6\)"):
        train(tiny_config(tiny_cifar, tmp_path / "run"))


def test_skip_nonfinite_skips_and_counts_the_step(tiny_cifar, tmp_path, monkeypatch):
    poison_loss_at_call(monkeypatch, 3)
    result = train(tiny_config(tiny_cifar, tmp_path / "run", skip_nonfinite=True))
    assert result["skipped_steps"] == 1 and result["iteration"] == 12
    assert [m["skipped_steps"] for m in metric_lines(tmp_path / "run")] == [1, 1]


def test_a_full_disk_is_one_clear_error_and_the_previous_checkpoint_survives(tiny_cifar, tmp_path, monkeypatch):
    real, calls = trainer.save_training_state, []

    def disk_fills(path, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, **kwargs)

    monkeypatch.setattr(trainer, "save_training_state", disk_fills)
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"No space left on device.*still holds iteration 6"):
        train(tiny_config(tiny_cifar, out))
    assert torch.load(out / "checkpoint.pt", weights_only=True)["progress"]["iteration"] == 6


def test_an_unwritable_out_is_a_one_line_error(tiny_cifar, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code = main(["train", "resnet20", "--data", str(tiny_cifar), "--out", str(blocker / "run"), "--epochs", "1"])
    error = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in error and error.startswith("reslab train: error: cannot create the run folder")


def test_an_existing_run_is_not_overwritten(tmp_path, tiny_cifar, reference_run):
    with pytest.raises(TrainingError, match="already holds a run"):
        train(tiny_config(tiny_cifar, reference_run))


# ------------------------------------------------------------------------------------------
# Several seeds, and two processes.


def test_seeds_write_a_summary_with_mean_and_std(tiny_cifar, tmp_path):
    out = tmp_path / "seeds"
    code = main(["train", "resnet20", "--data", str(tiny_cifar), "--out", str(out), "--seeds", "0,1", "--epochs", "1",
                 "--batch-size", "32", "--threads", "1", "--no-tta-flip", "--deterministic", "--progress", "quiet",
                 "--model-arg", "zero_init_residual=True"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    errors = [metric_lines(out / f"seed{k}")[-1]["test_error"] for k in (0, 1)]
    assert summary["test_errors"] == errors
    assert summary["test_error_mean"] == pytest.approx(sum(errors) / 2)
    assert summary["test_error_std"] == pytest.approx(abs(errors[0] - errors[1]) / 2 ** 0.5)
    assert summary["torch_version"] == torch.__version__ and summary["config"]["model_args"] == {"zero_init_residual": True}
    seed1 = read_config(out / "seed1")
    assert seed1.seed == 1 and seed1.deterministic and seed1.batch_size == 32 and seed1.recipe == "fast"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_in_step_and_as_well_as_one(tiny_cifar, tmp_path):
    flags = ["--epochs", "3", "--batch-size", "32", "--base-batch-size", "32", "--lr", "0.05", "--threads", "1",
             "--no-tta-flip", "--progress", "quiet", "--stochastic-depth", "0.8"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(free_port()), "-m", "reslab", "train", "resnet20", "--data", str(tiny_cifar),
               "--out", str(tmp_path / "ddp"), *flags]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "ddp" / "result.json").read_text())
    assert result["ranks_identical"] is True and result["iteration"] == 18
    assert main(["train", "resnet20", "--data", str(tiny_cifar), "--out", str(tmp_path / "one"), *flags]) == 0
    single = json.loads((tmp_path / "one" / "result.json").read_text())
    # the same global batches (each rank takes half), so the two runs should end close together
    assert result["train_loss"] == pytest.approx(single["train_loss"], abs=0.15)
    assert result["test_accuracy"] >= single["test_accuracy"] - 0.1


def test_tensorboard_without_the_package_is_a_clear_error(tiny_cifar, tmp_path):
    try:
        import tensorboard  # noqa: F401
        pytest.skip("tensorboard is installed here")
    except ImportError:
        pass
    with pytest.raises(ReslabError, match="--tensorboard needs the tensorboard package: pip install tensorboard"):
        train(tiny_config(tiny_cifar, tmp_path / "run", tensorboard=True))


# ------------------------------------------------------------------------------------------
# Test-time views and compiling


class PixelLogits(torch.nn.Module):
    """A 'model' whose logits are the pixels of channel 0, so every view can be checked."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0].flatten(1)


def test_tta_logits_average_the_mirror_and_the_translated_views():
    from reslab.inference.views import tta_logits

    model = PixelLogits()
    x = torch.randn(2, 3, 6, 6)
    assert torch.equal(tta_logits(model, x), model(x))
    flip = (model(x) + model(x.flip(3))) / 2
    assert torch.allclose(tta_logits(model, x, flip=True), flip)
    # shifted by 1 pixel up-left / down-right: the image moves, reflected pixels enter at the edge
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    shifted = [padded[..., :6, :6], padded[..., 2:, 2:]]
    assert torch.equal(shifted[1][:, :, :5, :5], x[:, :, 1:, 1:])
    views = [(model(v) + model(v.flip(3))) / 2 for v in shifted]
    expected = flip / 2 + (views[0] + views[1]) / 4
    assert torch.allclose(tta_logits(model, x, flip=True, translate=1), expected, atol=1e-6)
    with pytest.raises(ValueError, match="shift of 6 pixels"):
        tta_logits(model, x, translate=6)


class Untraceable(torch.nn.Module):
    """A model whose forward branches on its input's values, which torch.fx cannot trace."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x)).mean((2, 3))
        return y if y.sum() > 0 else -y


@pytest.mark.parametrize("moment_bn", [False, True])
def test_evaluation_runs_a_bn_folded_copy_with_the_same_results(moment_bn):
    from contextlib import nullcontext

    from reslab.train.batchnorm import MomentBatchNorm2d, use_moment_batch_norm
    from reslab.train.distributed import DistributedEnv

    torch.manual_seed(0)
    model = create_model("resnet20")
    if moment_bn:  # the fast recipe's BN, a subclass that torch.fx must not trace into
        use_moment_batch_norm(model)
        assert any(isinstance(m, MomentBatchNorm2d) for m in model.modules())
    with torch.no_grad():  # statistics and affine maps that are not the identity, so folding changes weights
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.5, 0.5)
    folded = trainer.folded_for_evaluation(model)
    assert folded is not model and model.training and not folded.training  # the model itself is untouched
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    images, labels = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    with torch.no_grad():
        assert torch.allclose(folded(images), model.eval()(images), atol=1e-4)
        model.train()
        unfolded = [torch.nn.functional.cross_entropy(model.eval()(images), labels).item(),
                    (model(images).argmax(1) != labels).float().mean().item()]
    loss, error = trainer.evaluate(model.train(), [(images, labels)], nullcontext, DistributedEnv())
    assert loss == pytest.approx(unfolded[0], abs=1e-4) and error == unfolded[1]
    untraceable = Untraceable()
    assert trainer.folded_for_evaluation(untraceable) is untraceable and not untraceable.training


def test_a_test_time_shift_too_large_for_the_images_is_refused_before_training(tiny_cifar, tmp_path):
    with pytest.raises(ReslabError, match="--tta-translate 32 needs images larger"):
        train(tiny_config(tiny_cifar, tmp_path / "run", tta_translate=32))
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_epochs_are_evaluated_single_view_and_the_last_also_with_the_views_showing_progress(tiny_cifar, tmp_path,
                                                                                             capsys):
    result = train(tiny_config(tiny_cifar, tmp_path / "run", tta_flip=True, tta_translate=0, eval_subset=50))
    first, last = metric_lines(tmp_path / "run")
    assert "test_error" in first and "test_error_views" not in first  # the curve: single view every epoch
    assert {"test_error", "test_loss_views", "test_error_views", "test_accuracy_views"} <= set(last)
    assert result["views"] == "views: mirror images" and result["test_error_views"] == last["test_error_views"]
    printed = capsys.readouterr().out
    assert "200 train, 50 test images" in printed  # --eval-subset: a class-balanced 50 of the 100
    assert "evaluating test: views: mirror images (1 batch)" in printed  # the final evaluation says it runs


@pytest.mark.parametrize("command", ["degradation", "sdepth"])
def test_the_training_based_commands_take_eval_subset(command):
    from reslab.cli import build_parser
    from reslab.commands.options import training_overrides

    args = build_parser().parse_args([command, "--data", "d", "--eval-subset", "1000"])
    assert training_overrides(args)["eval_subset"] == 1000
    assert TrainConfig.from_recipe("paper", **training_overrides(args)).eval_subset == 1000


def test_a_test_curve_of_one_point_is_marked_and_labelled():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from reslab.analysis.plots import RunCurves, plot_error_curves

    fig, ax = plt.subplots()
    plot_error_curves(ax, [RunCurves("once", [1, 2], [50.0, 40.0], [2], [45.0]),
                           RunCurves("curve", [1, 2], [50.0, 40.0], [1, 2], [48.0, 45.0])])
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert lines["once (test evaluated once)"].get_marker() == "o" and lines["curve"].get_marker() == "o"
    plt.close(fig)


@pytest.mark.parametrize("interval, evaluated", [(0, [2]), (2, [1, 2]), (1, [0, 1, 2])])
def test_the_test_set_is_evaluated_every_eval_interval_epochs_and_after_the_last(tiny_cifar, tmp_path, interval, evaluated):
    train(tiny_config(tiny_cifar, tmp_path / "run", epochs=3, eval_interval=interval))
    lines = metric_lines(tmp_path / "run")
    assert [line["epoch"] for line in lines] == [0, 1, 2]
    assert [line["epoch"] for line in lines if "test_error" in line] == evaluated


def test_the_fast_recipe_evaluates_every_fifth_epoch_for_its_curve():
    assert TrainConfig.from_recipe("fast").eval_interval == 5  # single view, 3-4 s each on 10,000 images


def test_small_crops_train_then_full_size_and_bad_values_are_refused(tiny_cifar, tmp_path, monkeypatch, capsys):
    from reslab.data import BatchLoader

    sizes = []  # the spatial size of each training batch
    assemble = BatchLoader.assemble

    def recording(self, indices, epoch=0, batch=0):
        images = assemble(self, indices, epoch, batch)
        if self.train:
            sizes.append(tuple(images.shape[-2:]))
        return images

    monkeypatch.setattr(BatchLoader, "assemble", recording)
    result = train(tiny_config(tiny_cifar, tmp_path / "run", small_crop=24, small_crop_part=0.5))
    assert sizes == [(24, 24)] * 6 + [(32, 32)] * 6  # epoch 1 on small crops, epoch 2 full size
    assert "small crops: epoch 1 train on random 24x24 crops, the rest on full-size images" in capsys.readouterr().out
    train(tiny_config(tiny_cifar, tmp_path / "all", small_crop=24, small_crop_part=1.0))
    assert "small crops: epochs 1-2 train on random 24x24 crops (every epoch" in capsys.readouterr().out
    assert result["test_error"] < 1.0 and read_config(tmp_path / "run").small_crop == 24
    with pytest.raises(ValueError, match="give both .* or neither"):
        TrainConfig(small_crop=24)
    with pytest.raises(ReslabError, match="--small-crop 40 is larger than the 32x32 images"):
        train(tiny_config(tiny_cifar, tmp_path / "b", small_crop=40, small_crop_part=0.5))
    assert not (tmp_path / "b" / "checkpoint.pt").exists()


def test_ghost_batch_norm_trains_with_statistics_per_group_and_saves_plain_bn_weights(tiny_cifar, tmp_path, capsys):
    from reslab.train.extensions import GhostBatchNorm

    result = train(tiny_config(tiny_cifar, tmp_path / "run"), [GhostBatchNorm(8)])
    assert "ghost batch norm: 19 BN layers take their training statistics per group of 8 images" in capsys.readouterr().out
    assert result["test_error"] < 1.0
    create_model("resnet20").load_state_dict(read_checkpoint(tmp_path / "run")[0])  # plain BN names
    with pytest.raises(ValueError, match=r"ghost_batch \(48\) must divide batch_size \(32\)"):
        train(tiny_config(tiny_cifar, tmp_path / "a"), [GhostBatchNorm(48)])
    with pytest.raises(ValueError, match="ghost_batch and sync_bn contradict"):
        from reslab.train.extensions import SetupContext

        GhostBatchNorm(32).setup(SetupContext(TrainConfig(sync_bn=True), create_model("resnet20"), None, False))
    with pytest.raises(ValueError, match="ghost_batch must be"):
        GhostBatchNorm(-1)


def test_whiten_stem_starts_the_first_convolution_from_the_training_images_and_freeze_stem_keeps_it(tiny_cifar, tmp_path, capsys):
    from reslab.data import channel_stats, load_dataset
    from reslab.registry import create_model
    from reslab.train.extensions import WhitenStem
    from reslab.train.whitening import whiten_stem_

    images = load_dataset(str(tiny_cifar), "train")
    expected = create_model("resnet20")
    whiten_stem_(expected, images.images, *channel_stats(images))
    for whiten in (True, False):  # lr 0: the weights the run ends with are the ones it started from
        train(tiny_config(tiny_cifar, tmp_path / str(whiten), epochs=1, lr=0.0), [WhitenStem()] if whiten else [])
        stem = final_weights(tmp_path / str(whiten))["conv1.weight"]
        assert torch.allclose(stem, expected.conv1.weight, atol=1e-4) == whiten  # eigh on 1 thread or 2
        assert ("whitened stem: 16 channels" in capsys.readouterr().out) == whiten
    # --freeze-stem: the whitened stem stays as it started while the rest trains.
    train(tiny_config(tiny_cifar, tmp_path / "frozen", epochs=1), [WhitenStem(freeze=True)])
    weights, start = final_weights(tmp_path / "frozen"), final_weights(tmp_path / "True")
    assert torch.allclose(weights["conv1.weight"], expected.conv1.weight, atol=1e-4)
    assert not torch.allclose(weights["layer1.0.conv1.weight"], start["layer1.0.conv1.weight"], atol=1e-3)
    out = capsys.readouterr().out
    assert "frozen stem: the first convolution (432 weights) is not trained" in out
    assert "weights: 19 tensors, 267,904 parameters" in out  # conv1's 432 left out of the optimiser


def test_compile_is_skipped_for_short_runs_and_without_a_cxx_compiler(monkeypatch):
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 1), torch.nn.BatchNorm2d(2))
    config = TrainConfig(compile=True, compile_min_iterations=100)
    same, note = trainer._maybe_compile(model, config, 99)
    assert same is model and "skipped" in note and "--compile-min-iterations 100" in note
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr("shutil.which", lambda name: None)
    same, note = trainer._maybe_compile(model, config, 100)
    assert same is model and "no C++ compiler" in note
    assert type(model[1]) is torch.nn.BatchNorm2d  # eager training keeps PyTorch's own BN kernel
    monkeypatch.setenv("CXX", "g++")
    compiled, note = trainer._maybe_compile(model, config, 100)
    assert compiled is not model and compiled._orig_mod is model and note.startswith("compile: torch.compile")
    assert type(model[1]) is torch.nn.BatchNorm2d and "MomentBatchNorm2d" not in note
    compiled, note = trainer._maybe_compile(model, TrainConfig(compile=True, compile_min_iterations=100, moment_bn=True), 100)
    assert type(model[1]).__name__ == "MomentBatchNorm2d" and "1 BN layers" in note
    assert trainer._maybe_compile(model, TrainConfig(compile=False), 10**6) == (model, "")
    # The fast recipe asks for MomentBatchNorm2d; with --no-compile it is said to have no effect.
    eager = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    same, note = trainer._maybe_compile(eager, TrainConfig(compile=False, moment_bn=True), 10**6)
    assert same is eager and type(eager[1]) is torch.nn.BatchNorm2d and "--moment-bn has no effect" in note


def test_compile_is_skipped_when_blocks_are_dropped_per_batch():
    """Per-batch stochastic depth draws in Python which branches run: compiled, it ran at half the
    eager speed, so the trainer trains eagerly and says why; per-sample drops still compile."""
    config = TrainConfig(compile=True, compile_min_iterations=1)
    dropping = create_model("resnet20", stochastic_depth=0.5)
    same, note = trainer._maybe_compile(dropping, config, 100)
    assert same is dropping and "per-batch stochastic depth" in note and "training eagerly" in note
    per_sample = create_model("resnet20", drop_path_rate=0.1)
    compiled, note = trainer._maybe_compile(per_sample, config, 100)
    assert compiled is not per_sample and note.startswith("compile: torch.compile")
    assert not trainer.drops_blocks_per_batch(create_model("resnet20"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_stops_the_page_faults_of_repeated_large_buffers():
    """Run in a fresh interpreter: the setting is process-wide and cannot be undone. The interpreter
    starts with glibc's mmap threshold fixed at its 128 KiB default: left dynamic, glibc raises it
    after the first free, and whether the freed buffers are then given back depends on what else
    the process allocated (a CI run once saw no faults before the call)."""
    script = textwrap.dedent("""
        import resource, sys, torch
        from reslab.train.memory import keep_freed_memory
        def step():  # like a training step: a few 4 MiB activations live at once, then all freed
            held = [torch.ones(1 << 20) for _ in range(8)]
            del held
        def faults_per_round():
            for _ in range(3):
                step()
            start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(20):
                step()
            return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / 20
        before = faults_per_round()
        agreed = keep_freed_memory()
        print(before, faults_per_round(), agreed)
    """)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    before, after, agreed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                           check=True, env=env).stdout.split()
    assert agreed == "True"
    assert float(before) > 4000  # glibc gave the 32 MiB back, so 8,192 pages of 4 KiB fault in again
    assert float(after) < 10


class ActivationDtype:
    """The dtypes of the first convolution's outputs from the second training step on."""

    def __init__(self):
        self.dtypes = []

    def after_backward(self, model, iteration):
        if iteration == 0:
            model.conv1.register_forward_hook(lambda module, inputs, output: self.dtypes.append(output.dtype))


@pytest.mark.parametrize("flags, chosen, dtype", [({"avx512f", "amx_bf16"}, "bf16", torch.bfloat16),
                                                   ({"avx512f"}, "fp32", torch.float32)])
def test_the_trainer_runs_and_records_the_precision_auto_picks(tiny_cifar, tmp_path, monkeypatch, capsys,
                                                               flags, chosen, dtype):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
    seen = ActivationDtype()
    train(tiny_config(tiny_cifar, tmp_path / "run", epochs=None, iterations=2), extensions=[seen])
    assert seen.dtypes and set(seen.dtypes) == {dtype}  # the second step, then evaluation
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["config"]["precision"] == "auto" and saved["environment"]["precision"] == chosen
    assert f"precision: {chosen}" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------
# The redesigned trainer: recipes, retired switches, optimisers, the hook interface.


def test_the_zoo_recipe_is_fast_for_50_epochs_evaluated_single_view_every_epoch():
    from dataclasses import asdict

    # the command the shipped CIFAR weights are trained with
    command = TrainConfig.from_recipe("fast", epochs=50, eval_interval=1, tta_flip=False, tta_translate=0)
    zoo = TrainConfig.from_recipe("zoo")
    assert {**asdict(zoo), "recipe": "fast"} == asdict(command)


def test_every_config_field_is_in_exactly_one_group():
    from dataclasses import fields

    from reslab.train.config import CONFIG_GROUPS

    grouped = [name for names in CONFIG_GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(f.name for f in fields(TrainConfig)) and len(grouped) == len(set(grouped))
    assert list(CONFIG_GROUPS) == ["data", "model", "optimisation", "evaluation", "runtime"]


@pytest.mark.parametrize("argv", [["--ghost-batch", "32"], ["--whiten-stem"], ["--no-freeze-stem"]])
def test_retired_flags_name_their_replacement_in_one_line(argv, capsys):
    with pytest.raises(SystemExit) as usage:
        main(["train", "resnet20", "--data", "d", "--out", "o", *argv])
    error = capsys.readouterr().err
    assert usage.value.code == 2 and error.count("\n") == 1
    assert "was retired after reslab 0.1" in error and "reslab.train.extensions." in error


def test_saved_configs_with_retired_fields_load_at_their_default_and_name_the_extension_otherwise():
    saved = {**TrainConfig().to_dict(), "whiten_stem": False, "freeze_stem": False, "ghost_batch": 0}
    assert TrainConfig.from_dict(saved) == TrainConfig()
    with pytest.raises(ValueError, match=r"ghost_batch was retired .*GhostBatchNorm\(N\)"):
        TrainConfig.from_dict({**saved, "ghost_batch": 32})
    with pytest.raises(ValueError, match="whiten_stem was retired"):
        TrainConfig.from_recipe("fast", whiten_stem=True)


def test_adamw_is_a_config_value_and_steps_its_first_beta_as_the_momentum(tiny_cifar, tmp_path, capsys):
    result = train(tiny_config(tiny_cifar, tmp_path / "run", epochs=1, optimizer="adamw", nesterov=False,
                               schedule="one-cycle", warmup=0.5, lr=0.002))
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["optimizer"]
    assert "exp_avg" in next(iter(state["state"].values()))  # Adam's moments, not SGD's momentum buffer
    # one-cycle's momentum at the last step (5 of 6), on its way back from 0.85 to 0.9
    assert state["param_groups"][0]["betas"][0] == pytest.approx(0.85 + 0.05 * 2 / 3)
    assert result["test_error"] < 1.0
    with pytest.raises(ValueError, match="nesterov is SGD's"):
        TrainConfig(optimizer="adamw", nesterov=True)
    with pytest.raises(ValueError, match="optimizer must be one of sgd, adamw"):
        TrainConfig(optimizer="lamb")


class EpochTimer:
    """The example extension of docs/training.md: every hook it uses, recorded in order."""

    def __init__(self):
        self.calls = []

    def setup(self, context):
        self.calls.append("setup")
        return f"epoch timer on {context.config.model}"

    def transform_batch(self, batch, iteration):
        self.calls.append("batch")
        return batch

    def after_backward(self, model, iteration):
        self.calls.append("backward")

    def after_step(self, model, iteration):
        self.calls.append("step")

    def on_epoch_end(self, epoch, metrics):
        self.calls.append("epoch")
        return {"timer_epoch": epoch}

    def evaluated_model(self, model):
        self.calls.append("evaluated")
        return model


def test_extensions_get_every_hook_in_order_and_add_to_the_metrics(tiny_cifar, tmp_path, capsys):
    timer = EpochTimer()
    train(tiny_config(tiny_cifar, tmp_path / "run", epochs=None, iterations=2), [timer])
    assert timer.calls == ["setup", "batch", "backward", "step", "batch", "backward", "step", "evaluated", "epoch"]
    assert "epoch timer on resnet20" in capsys.readouterr().out
    assert metric_lines(tmp_path / "run")[-1]["timer_epoch"] == 0


def test_the_example_extension_of_the_training_docs_runs(tiny_cifar, tmp_path, capsys):
    import re

    text = (REPO / "docs" / "training.md").read_text()
    example = next(block for block in re.findall(r"```python\n(.*?)```", text, re.DOTALL) if "class GradientNorm" in block)
    namespace: dict = {}
    exec(example, namespace)
    train(tiny_config(tiny_cifar, tmp_path / "run", epochs=1), [namespace["GradientNorm"]()])
    assert metric_lines(tmp_path / "run")[0]["grad_norm"] > 0
    assert "logging the gradient norm of every step" in capsys.readouterr().out


def test_the_callbacks_keyword_of_earlier_releases_still_passes_extensions(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(trainer, "_run", lambda config, hooks, resume, env, device: seen.extend(hooks.extensions))
    first, second = GradientRecorder(), GradientRecorder()
    train(TrainConfig(data="d", out=str(tmp_path / "run"), ema_decay=0.5), [first], callbacks=[second])
    assert [type(e).__name__ for e in seen] == ["Ema", "GradientRecorder", "GradientRecorder"]
    assert seen[1] is first and seen[2] is second
