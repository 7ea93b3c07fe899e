"""Faults tried through the command line: SIGKILL at random moments, a full disk, non-finite
losses, broken data sets and checkpoints that would run code. Each must end in a one-line error
(exit status not 0, no traceback) or a run that, resumed, ends exactly as an uninterrupted one.

The SIGKILL test runs two trials of ``benchmarks/kill_resume.py``; that script runs 24 (see the
README's reliability table). ResNet-20, one thread, runs of a few iterations on ``tiny_cifar``.
"""

import json
import os
import pickle
import resource
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import reslab.train
from reslab import create_model
from reslab.checkpoint import make_card, partial_writes, save_model
from reslab.cli import main
from reslab.train.state import CHECKPOINT_FILE, STATE_FORMAT, load_training_state
from reslab.train.trainer import RUN_FILES

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import kill_resume  # noqa: E402  (the SIGKILL harness: its training flags, trials and checks)


def one_line_error(stderr: str, command: str) -> str:
    """The error line of a failed command; fails unless it is the only line besides the data
    decoder's progress (printed when the data cache is cold, as when a test runs alone) and no
    traceback. (Progress bars redraw their line after a carriage return: a line shows what
    follows the last.)"""
    lines = [line.rsplit("\r", 1)[-1] for line in stderr.split("\n")]
    lines = [line for line in lines if line.strip() and not line.startswith("decoding ")]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1 and lines[0].startswith(f"reslab {command}: error: "), stderr
    return lines[0]


def cli_error(capsys, argv: list[str]) -> str:
    """Run ``reslab ARGV`` in this process: it must fail with status 1 and one line on stderr."""
    capsys.readouterr()
    status = main(argv)
    error = one_line_error(capsys.readouterr().err, argv[0])
    assert status == 1, error
    return error


# ------------------------------------------------------------------------------------------
# SIGKILL, SIGINT and a full disk, against one uninterrupted reference run.


@pytest.fixture(scope="module")
def harness(tiny_cifar, tmp_path_factory):
    """The kill harness's uninterrupted run on tiny_cifar (its slice: 20 train, 10 test per class)."""
    workdir = tmp_path_factory.mktemp("kill")
    env = kill_resume.child_environment(workdir / "cache")
    return kill_resume.reference_run(tiny_cifar, workdir, env), workdir, env


def test_sigkill_at_random_moments_then_resume_loses_nothing(tiny_cifar, harness):
    reference, workdir, env = harness
    # Two of the harness's trials (fixed seed): a kill after an epoch's summary line, while its files
    # are written, then a kill of the resumed process at a random moment; a kill during an evaluation.
    plans = kill_resume.plan_trials(3, seed=0, reference=reference)[1:]
    phases = []
    for index, specs in enumerate(plans):
        trial = kill_resume.run_trial(index, specs, tiny_cifar, workdir, reference.out, env)
        assert trial.survived, trial.problems
        phases += trial.phases
    assert any(not phase.startswith("not hit") for phase in phases), phases  # a kill did land


class InterruptAfterFirstEpoch:
    """Sends this process SIGINT (Ctrl-C) at the end of the first epoch."""

    def on_epoch_end(self, epoch, metrics):
        if epoch == 0:
            os.kill(os.getpid(), signal.SIGINT)


def limit_file_size_to(limit: int):
    """A preexec_fn: the child may write no file beyond ``limit`` bytes, as on a full disk
    (writes fail with EFBIG; SIGXFSZ, which would kill it, ignored)."""
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_sigint_then_a_full_disk_keep_the_checkpoint_and_the_run_resumes_exactly(tiny_cifar, harness, tmp_path,
                                                                                 monkeypatch, capsys):
    reference, _, env = harness
    out = tmp_path / "run"
    real_train = reslab.train.train
    monkeypatch.setattr(reslab.train, "train", lambda config, callbacks=(), **kw: real_train(
        config, [InterruptAfterFirstEpoch(), *callbacks], **kw))
    assert main(kill_resume.train_command(tiny_cifar, out)) == 130  # SIGINT: checkpoint saved, exit 128 + 2
    assert f"Continue with: reslab train --resume {out}" in capsys.readouterr().err
    monkeypatch.undo()
    saved = (out / "checkpoint.pt").read_bytes()
    assert load_training_state(out / "checkpoint.pt")["progress"]["iteration"] == kill_resume.PER_EPOCH

    # Resumed on a "full disk": the second epoch trains, then its model file (1 MB) cannot be written.
    full = subprocess.run([sys.executable, "-m", "reslab", "train", "--resume", str(out)], capture_output=True,
                          text=True, env=env, timeout=300, preexec_fn=limit_file_size_to(256 * 1024))
    error = one_line_error(full.stderr, "train")
    assert full.returncode == 1
    assert "File too large" in error and "model.safetensors" in error
    assert f"{out / 'checkpoint.pt'} still holds iteration {kill_resume.PER_EPOCH}" in error
    assert (out / "checkpoint.pt").read_bytes() == saved and not partial_writes(out, RUN_FILES)

    # With space again, the resumed run ends exactly as the uninterrupted one (logs cut back included).
    assert main(["train", "--resume", str(out)]) == 0
    assert kill_resume.compare_with_reference(out, reference.out) == []


# ------------------------------------------------------------------------------------------
# Non-finite losses: stop naming the step and the last good checkpoint, or skip when asked.

# lr 0.01 for the first epoch's 6 iterations (a "low-lr start"), then 1e30: the loss turns NaN
# in the second epoch, after the first epoch's checkpoint.
HUGE_LR = ["--epochs", "2", "--batch-size", "32", "--base-batch-size", "32", "--threads", "1", "--progress", "quiet",
           "--no-tta-flip", "--eval-batch-size", "100", "--lr", "1e30"]
EXPLODES_IN_EPOCH_2 = [*HUGE_LR, "--low-lr", "0.01", "--low-lr-max-iterations", "6", "--low-lr-min-depth", "0",
                       "--low-lr-until-error", "none"]


def test_an_exploding_lr_stops_the_run_naming_the_step_and_the_last_good_checkpoint(tiny_cifar, tmp_path, capsys):
    out = tmp_path / "run"
    error = cli_error(capsys, ["train", "resnet20", "--data", str(tiny_cifar), "--out", str(out), *EXPLODES_IN_EPOCH_2])
    assert "the training loss is nan at iteration 7 (epoch 2)" in error
    assert f"the last good checkpoint is {out / 'checkpoint.pt'} (iteration 6)" in error
    assert "--skip-nonfinite" in error and "--lr" in error
    assert load_training_state(out / "checkpoint.pt")["progress"]["iteration"] == 6
    assert not (out / "result.json").exists()

    error = cli_error(capsys, ["train", "resnet20", "--data", str(tiny_cifar), "--out", str(tmp_path / "first"),
                               *HUGE_LR])  # lr 1e30 from the start
    assert "loss is nan at iteration 1 (epoch 1)" in error and "no checkpoint had been written yet" in error


def test_skip_nonfinite_skips_and_counts_every_bad_step(tiny_cifar, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "resnet20", "--data", str(tiny_cifar), "--out", str(out), *EXPLODES_IN_EPOCH_2,
                 "--skip-nonfinite", "--progress", "plain"]) == 0
    skipped = [line for line in capsys.readouterr().out.splitlines() if line.startswith("skipped iteration")]
    assert [line.split()[2] for line in skipped] == ["7:", "8:", "9:", "10:", "11:"]
    result = load_training_state(out / "checkpoint.pt")["progress"]["result"]
    assert result["skipped_steps"] == 5 and result["iteration"] == 12

    def refuse(constant):
        raise AssertionError(f"result.json holds {constant}, which strict JSON parsers reject")

    for name in ("result.json", "metrics.jsonl"):  # NaN losses of diverged weights are written as null
        for line in (out / name).read_text().splitlines() if name.endswith("l") else [(out / name).read_text()]:
            json.loads(line, parse_constant=refuse)


# ------------------------------------------------------------------------------------------
# Broken data sets: one line naming the file and what to do.


def class_folders(root: Path, classes=("a", "b"), per_class: int = 2) -> Path:
    for split in ("train", "test"):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (32, 32), (40 * i, 90, 200)).save(root / split / name / f"{i}.png")
    return root


def break_truncated(root):
    good = (root / "train" / "b" / "1.png").read_bytes()
    (root / "train" / "b" / "1.png").write_bytes(good[: len(good) // 2])
    return "1.png (OSError: image file is truncated)", "replace or delete them, or raise --bad-image-limit"


def break_corrupt(root):
    (root / "train" / "a" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n but then nothing of an image")
    return "0.png (UnidentifiedImageError", "replace or delete them, or raise --bad-image-limit"


# A non-image file, an image of another size and a 16-bit image were errors of the in-memory
# reader; since the streaming path (issue 33) they are skipped with a count, streamed and
# converted: tests/test_streaming.py checks each.


def break_empty_class(root):
    (root / "train" / "c").mkdir()
    return "class folder " + str(root / "train" / "c") + " holds no image files", "add images or delete the folder"


def break_no_classes(root):
    for path in sorted((root / "train").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    return f"{root / 'train'} has no class folders", "expected " + str(root / "train" / "<class name>/<image files>")


def break_missing(root):
    shutil.rmtree(root)
    return f"{root} does not exist", "pass a data set folder"


def break_a_file(root):
    shutil.rmtree(root)
    root.write_text("a file where the data set folder should be")
    return f"{root} is not a folder", "pass a data set folder"


def cifar_python(root: Path) -> Path:
    """Official cifar-10-batches-py files (Python 3 pickles of the same content) with 2 images per batch."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}, protocol=2))
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), "labels": [3, 7]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return folder


def break_truncated_pickle(root):
    batch = cifar_python(root) / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:5000])
    return "data_batch_2 is truncated or corrupt", "download it again"


def break_labels(root):
    batch = cifar_python(root) / "data_batch_4"
    batch.write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [3, 10]}, protocol=2))
    return "data_batch_4 has labels 3..10 outside the 10 classes", "download them again"


def break_truncated_binary(root):
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    (folder / "batches.meta.txt").write_text("\n".join(f"c{i}" for i in range(10)))
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        (folder / name).write_bytes(bytes(2 * 3073 - (100 if name == "data_batch_5.bin" else 0)))
    return "data_batch_5.bin is 6046 bytes, not a whole number of 3073-byte", "download it again"


BREAKS = [break_truncated, break_corrupt, break_empty_class,
          break_no_classes, break_missing, break_a_file, break_truncated_pickle, break_labels, break_truncated_binary]


@pytest.mark.parametrize("damage", BREAKS, ids=lambda f: f.__name__[len("break_"):])
def test_bad_data_is_a_one_line_error_naming_the_file_and_what_to_do(tmp_path, capsys, damage):
    root = tmp_path / "data"
    if damage not in (break_truncated_pickle, break_labels, break_truncated_binary):  # those write CIFAR files
        class_folders(root)
    culprit, remedy = damage(root)
    out = tmp_path / "run"
    argv = ["train", "resnet20", "--data", str(root), "--out", str(out), "--epochs", "1",
            "--batch-size", "2", "--progress", "quiet", "--threads", "1"]
    if damage in (break_truncated, break_corrupt):  # streamed: skipped and named, then over --bad-image-limit
        capsys.readouterr()
        assert main(argv) == 1
        lines = capsys.readouterr().err.strip().splitlines()
        error = lines[-1]
        assert error.startswith("reslab train: error: ") and any(line.startswith("skipped unreadable image") for line in lines)
    else:
        error = cli_error(capsys, argv)
    assert culprit in error and remedy in error
    assert not (out / "checkpoint.pt").exists()


def test_bad_data_through_a_real_process_exits_1_without_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "reslab", "train", "resnet20", "--data", str(tmp_path / "nowhere"),
                           "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "does not exist" in one_line_error(done.stderr, "train")


# ------------------------------------------------------------------------------------------
# Untrusted checkpoints: every command that loads one refuses pickled code, and the code never runs.


class RunsCode:
    """Unpickling this runs a shell command: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


@pytest.fixture(scope="module")
def trusted(tmp_path_factory, tiny_cifar):
    """A good model file of tiny_cifar's classes (for commands that take two) and an image."""
    path = tmp_path_factory.mktemp("trusted") / "model.safetensors"
    model = create_model("resnet20")
    classes = sorted(p.name for p in (tiny_cifar / "train").iterdir())
    save_model(path, model, make_card("resnet20", model, class_names=classes))
    return path, next((tiny_cifar / "test" / "cat").iterdir())


def evil_checkpoint(folder: Path, form: str, marker: Path) -> Path:
    """A checkpoint whose unpickling would create ``marker``: a training checkpoint in torch.save's
    zip format with the payload among its weights, or a bare pickle, both as checkpoint.pt of
    a run folder; or a bare pickle named .safetensors."""
    payload = RunsCode(marker)
    path = folder / ("evil.safetensors" if form == "disguised as safetensors" else "checkpoint.pt")
    if form == "torch zip":
        state = create_model("resnet20").state_dict()
        torch.save({"format": STATE_FORMAT, "model": {**state, "fc.bias": payload}, "card": "{}"}, path)
    else:
        path.write_bytes(pickle.dumps({"fc.bias": payload}, protocol=2))
    return path


def checkpoint_commands(evil: Path, good: Path, image: Path, data: Path, out: Path) -> dict[str, list[str]]:
    """Every command that takes a checkpoint, given ``evil`` (in each of its checkpoint arguments)."""
    eval_data = ["--data", str(data), "--images", "10", "--out", str(out)]
    commands = {
        "eval": ["eval", str(evil), *eval_data],
        "predict": ["predict", str(evil), str(image)],
        "export": ["export", str(evil), "--format", "onnx", "--out", str(out / "m.onnx")],
        "bench": ["bench", str(evil), "--repeats", "1", "--warmup", "0"],
        "lesion": ["lesion", str(evil), *eval_data],
        "lesion --plain": ["lesion", str(good), "--plain", str(evil), *eval_data],
        "paths": ["paths", str(evil), "--out", str(out)],
        "responses": ["responses", str(good), str(evil), *eval_data],
    }
    if evil.name == CHECKPOINT_FILE:  # the run folder's training checkpoint
        commands["train --resume"] = ["train", "--resume", str(evil.parent)]
    return commands


@pytest.mark.parametrize("form", ["torch zip", "bare pickle", "disguised as safetensors"])
def test_every_command_refuses_a_checkpoint_that_would_run_code(tmp_path, capsys, trusted, tiny_cifar, form):
    good, image = trusted
    marker, run = tmp_path / "code-ran", tmp_path / "run"
    run.mkdir()
    evil = evil_checkpoint(run, form, marker)
    (run / "config.json").write_text(json.dumps({"config": {"model": "resnet20", "data": "x", "out": str(run)}}))
    expected = "is a torch checkpoint, not a safetensors file" if evil.suffix == ".safetensors" else "refusing to load"
    for name, argv in checkpoint_commands(evil, good, image, tiny_cifar, tmp_path / "out").items():
        error = cli_error(capsys, argv)
        assert expected in error and str(evil) in error, (name, error)
        assert not marker.exists(), f"`reslab {name}` ran the code in the checkpoint"
    # The payload is live: an unsafe load does run it, so the assertions above can fail.
    with open(evil, "rb") as f:
        (torch.load(f, weights_only=False) if form == "torch zip" else pickle.load(f))
    assert marker.exists()


# ------------------------------------------------------------------------------------------
# A device the machine lacks: argparse cannot know, so it is the command's one-line error.


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_asking_for_cuda_without_it_is_a_one_line_error_in_every_command_that_runs_a_model(tmp_path, capsys, trusted,
                                                                                          tiny_cifar):
    good, image = trusted
    data = ["--data", str(tiny_cifar), "--images", "10", "--out", str(tmp_path / "out")]
    for argv in (["eval", str(good), *data], ["lesion", str(good), *data], ["responses", str(good), *data],
                 ["paths", str(good), "--out", str(tmp_path / "out")], ["predict", str(good), str(image)],
                 ["bench", "resnet20", "--repeats", "1"],
                 ["train", "resnet20", "--data", str(tiny_cifar), "--out", str(tmp_path / "run")]):
        error = cli_error(capsys, [*argv, "--device", "cuda"])
        assert "CUDA" in error and "--device cpu" in error, error


# ------------------------------------------------------------------------------------------
# Inputs a new user gives by mistake (issue 28): each is one line that says what to do.


def test_a_validation_split_as_large_as_the_training_set_is_a_one_line_error(tiny_cifar, tmp_path, capsys):
    """It failed later with "no images to compute channel statistics of"."""
    error = cli_error(capsys, ["train", "resnet20", "--data", str(tiny_cifar), "--out", str(tmp_path / "run"),
                               "--val", "200", "--epochs", "1"])  # tiny_cifar has 200 training images
    assert "a validation split of 200 images leaves none of its 200 training images" in error, error
    assert "hold out fewer" in error


def test_a_validation_split_that_empties_a_class_names_it():
    from reslab.data import ImageDataset, split_validation
    from reslab.errors import DataError

    images = torch.zeros(5, 4, 4, 3, dtype=torch.uint8)
    dataset = ImageDataset(images, torch.tensor([0, 0, 0, 1, 1]), ["three", "two"], "five images")
    train, val = split_validation(dataset, 2)
    assert train.class_counts() == [2, 1] and val.class_counts() == [1, 1]
    with pytest.raises(DataError, match=r"leaves class 'two' no training images"):
        split_validation(dataset, 4)


def test_a_cache_folder_that_cannot_be_written_is_one_warning_line(trusted, tiny_cifar, tmp_path, capsys, monkeypatch):
    """It printed a Python UserWarning: file, line number, category and the source line."""
    good, _ = trusted
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder should be")
    monkeypatch.setenv("RESLAB_CACHE", str(blocked))
    capsys.readouterr()
    assert main(["eval", str(good), "--data", str(tiny_cifar), "--images", "10", "--out", str(tmp_path / "out")]) == 0
    lines = [line.rsplit("\r", 1)[-1] for line in capsys.readouterr().err.splitlines()]
    lines = [line for line in lines if line.strip() and not line.startswith("decoding ")]
    assert lines, "no warning"
    for line in lines:
        assert line.startswith("reslab eval: warning: could not write the data set cache in "), line
        assert "Set RESLAB_CACHE to a writable folder" in line and "Errno" not in line and "UserWarning" not in line


@pytest.mark.parametrize("absent, flags, names", [
    (("onnx", "onnxruntime"), [], "onnx and onnxruntime"),
    (("onnxruntime",), [], "onnxruntime"),
    (("onnx",), ["--no-verify"], "onnx"),
])
def test_onnx_export_without_its_packages_names_the_pip_extra(trusted, tmp_path, capsys, monkeypatch, absent, flags, names):
    """It said "try the default opset 17" (which it already was)."""
    good, _ = trusted
    for module in absent:
        monkeypatch.setitem(sys.modules, module, None)  # `import onnx` now raises ImportError
    error = cli_error(capsys, ["export", str(good), "--format", "onnx", "--out", str(tmp_path / "m.onnx"), *flags])
    assert f"ONNX export needs {names}, not installed: pip install 'reslab[export]'" in error, error
    assert not (tmp_path / "m.onnx").exists()


def test_an_unreadable_file_is_named_by_its_reason_not_an_errno_or_a_corruption(trusted, tiny_cifar, tmp_path, capsys,
                                                                                 monkeypatch):
    """A file the process may not read was reported as '[Errno 13] Permission denied' inside a
    'cannot be read as an image ... replace or delete it' (the tests run as root, where chmod does
    not stop reads, so the denial is simulated at Pillow's open)."""
    import PIL.Image

    good, image = trusted
    real_open = PIL.Image.open

    def denied(path, *args, **kwargs):
        if str(path).endswith(".png"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(PIL.Image, "open", denied)
    capsys.readouterr()
    assert main(["predict", str(good), str(image)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"reslab predict: error: cannot read {image} as an image (permission denied)", err
    from reslab.data.readers import decode_image

    with pytest.raises(PermissionError):  # not a DataError telling the user to delete the file
        decode_image(str(image))
