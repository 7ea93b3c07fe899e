"""The command line frame: help on every subcommand, one-line errors, the models table."""

import re
import subprocess
import sys

import pytest

from reslab.cli import COMMANDS, main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reslab", *args], capture_output=True, text=True, timeout=300)


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: reslab " + command) and len(out.splitlines()) > 3


def test_models_table_lists_matching_models(capsys):
    assert main(["models", "resnet2*"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["model", "family"]
    names = [line.split()[0] for line in lines[1:]]
    assert names == ["resnet20"]
    assert "269,722" in lines[1] and "40.55M" in lines[1]


def test_models_markdown_and_json(capsys):
    import json

    assert main(["models", "resnet56", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["params"] == 853_018 and rows[0]["published_params"] == 0.85e6
    assert main(["models", "resnet56", "--format", "markdown"]) == 0
    assert capsys.readouterr().out.startswith("| model | family |")


def test_user_error_is_one_line_with_status_1():
    result = run_cli("models", "no-such-model*")
    assert result.returncode == 1
    assert result.stderr.strip() == "reslab models: error: no model matches 'no-such-model*'"
    assert "Traceback" not in result.stderr


def test_bad_choice_is_a_usage_error_with_status_2():
    result = run_cli("models", "--format", "xml")
    assert result.returncode == 2 and "invalid choice" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("argv", [("train", "resnet20", "--epochs", "-1"), ("train", "resnet20", "--blocks", "9"),
                                  ("trian",), ()])
def test_usage_error_is_one_line_that_points_to_help(capsys, argv):
    with pytest.raises(SystemExit) as stopped:
        main(list(argv))
    err = capsys.readouterr().err
    command = "reslab train" if argv[:1] == ("train",) else "reslab"
    assert stopped.value.code == 2
    assert err.count("\n") == 1 and err.startswith(f"{command}: error: "), err
    assert err.rstrip().endswith(f"(`{command} --help` lists the options)"), err


def test_help_does_not_show_empty_or_repeated_defaults(capsys):
    for name in COMMANDS:
        with pytest.raises(SystemExit):
            main([name, "--help"])
        text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines anywhere
        assert "(default: None)" not in text, name
        assert not re.search(r"\(default: [^)]*\) \(default: ", text), name  # "(default: fast) (default: None)"


@pytest.mark.parametrize("error, one_line", [
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 68719476736 bytes."), True),
    (MemoryError(), True),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), False),  # a bug stays a traceback
])
def test_out_of_memory_is_one_line_that_suggests_a_smaller_batch(monkeypatch, capsys, error, one_line):
    import reslab.commands.models as models_command

    def allocate(args):
        raise error

    monkeypatch.setattr(models_command, "run", allocate)
    monkeypatch.delenv("RESLAB_DEBUG", raising=False)
    if not one_line:
        with pytest.raises(RuntimeError):
            main(["models"])
        return
    assert main(["models"]) == 1
    printed = capsys.readouterr().err.strip().splitlines()
    assert len(printed) == 1 and printed[0].startswith("reslab models: error: out of memory")
    assert "--batch-size" in printed[0]


# ------------------------------------------------------------------------------------------
# Where results go: runs/<command>/<name> by default, never over another run's files


def test_default_output_folder_is_fresh_under_runs_and_never_reused(tmp_path, monkeypatch):
    from pathlib import Path

    from reslab.commands.options import output_folder

    monkeypatch.chdir(tmp_path)
    assert output_folder(None, "lesion", "r56") == Path("runs/lesion/r56")
    Path("runs/lesion/r56").mkdir(parents=True)  # empty: still free
    assert output_folder(None, "lesion", "r56") == Path("runs/lesion/r56")
    (tmp_path / "runs/lesion/r56/lesion.json").write_text("{}")
    assert output_folder(None, "lesion", "r56") == Path("runs/lesion/r56-2")
    assert output_folder(None, "lesion", "r56", overwrite=True) == Path("runs/lesion/r56")
    assert output_folder(None, "eval", "a/b c") == Path("runs/eval/a_b_c")
    # a command that continues its own runs (degradation) takes a folder holding only them
    (tmp_path / "runs/degradation/paper/resnet20").mkdir(parents=True)
    assert output_folder(None, "degradation", "paper", continues=("resnet20",)) == Path("runs/degradation/paper")


def test_output_folder_refuses_files_and_folders_holding_files(tmp_path):
    from reslab.commands.options import OutputError, output_file, output_folder

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "lesion.json").write_text("{}")
    with pytest.raises(OutputError, match=r"already holds files \(lesion.json\); .*--overwrite"):
        output_folder(taken, "lesion", "x")
    assert output_folder(taken, "lesion", "x", overwrite=True) == taken
    assert output_folder(taken, "degradation", "x", continues=("lesion.json",)) == taken
    with pytest.raises(OutputError, match=r"is a file, not a folder"):
        output_folder(taken / "lesion.json", "lesion", "x")
    with pytest.raises(OutputError, match=r"lesion.json is a file, not a folder"):
        output_folder(taken / "lesion.json" / "sub", "lesion", "x")
    with pytest.raises(OutputError, match=r"exists; give another file name with --out, or --overwrite"):
        output_file(taken / "lesion.json")
    assert output_file(taken / "lesion.json", overwrite=True) == taken / "lesion.json"
    with pytest.raises(OutputError, match=r"is a folder, not a file"):
        output_file(taken, overwrite=True)


@pytest.mark.parametrize("argv, kind", [
    (["eval", "CKPT", "--data", "d"], "folder"),
    (["lesion", "CKPT", "--data", "d"], "folder"),
    (["paths", "CKPT"], "folder"),
    (["responses", "CKPT", "CKPT", "--data", "d"], "folder"),
    (["degradation", "--data", "d"], "folder"),
    (["sdepth", "--data", "d"], "folder"),
    (["plot", "RUN"], "file"),
    (["export", "CKPT", "--format", "torchscript"], "file"),
    (["report", "RUN"], "file"),
])
def test_every_command_that_writes_refuses_to_overwrite_without_overwrite(tmp_path, capsys, argv, kind):
    """The committed results tree was overwritten by `reslab lesion` run from the repository root:
    every command now refuses a folder holding files, an existing file, or a path of the wrong
    kind, in one line, before any work."""
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "keep.json").write_text('{"experiment": "x"}')
    (folder / "keep.png").write_bytes(b"png")
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"not read: the output check comes first")
    argv = [str(ckpt) if a == "CKPT" else str(folder) if a == "RUN" else a for a in argv]
    targets = [folder] if kind == "folder" else [folder / "keep.json", folder]
    for out, expected in zip(targets, ("already holds files" if kind == "folder" else "exists;", "is a folder")):
        capsys.readouterr()
        assert main([*argv, "--out", str(out)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"reslab {argv[0]}: error: ") and expected in err[0], err
    file_out = folder / "keep.json"
    if kind == "folder":  # an existing file given as the output folder
        assert main([*argv, "--out", str(file_out)]) == 1
        assert "is a file, not a folder" in capsys.readouterr().err
    assert (folder / "keep.json").read_text() == '{"experiment": "x"}'


def test_eval_says_which_views_it_used_and_offers_the_runs_own(tiny_cifar, tmp_path, capsys):
    """Training reported accuracy with test-time views, eval with one view, and nothing said why."""
    import json

    from reslab import create_model
    from reslab.checkpoint import make_card, save_model

    model = create_model("resnet20")
    classes = sorted(p.name for p in (tiny_cifar / "test").iterdir())
    ckpt = tmp_path / "run" / "model.safetensors"
    ckpt.parent.mkdir()
    save_model(ckpt, model, make_card("resnet20", model, class_names=classes,
                                      config={"tta_flip": True, "tta_translate": 1}))
    data = ["--data", str(tiny_cifar), "--images", "10", "--fp32"]
    assert main(["eval", str(ckpt), *data, "--out", str(tmp_path / "single")]) == 0
    out = capsys.readouterr().out
    assert "(test, single view)" in out and "`--views run`" in out
    assert "mirror images + 1-pixel shifts" in out
    assert main(["eval", str(ckpt), *data, "--views", "run", "--out", str(tmp_path / "run_views")]) == 0
    out = capsys.readouterr().out
    assert "(test, views: mirror images + 1-pixel shifts)" in out and "note:" not in out
    table = json.loads((tmp_path / "run_views" / "eval.json").read_text())
    assert table["tta_flip"] is True and table["tta_translate"] == 1
    assert table["views"] == "views: mirror images + 1-pixel shifts"
    assert main(["eval", str(ckpt), *data, "--views", "run", "--tta-flip", "--out", str(tmp_path / "both")]) == 1
    assert "--views run takes the run's own views" in capsys.readouterr().err


@pytest.mark.parametrize("argv, suggestion", [
    (["trian"], "invalid choice: 'trian'; did you mean 'train'?"),
    (["export", "m.safetensors", "--format", "onx"], "did you mean 'onnx'?"),
    (["eval", "m.safetensors", "--data", "d", "--overwirte"], "unrecognized arguments: --overwirte; did you mean --overwrite?"),
])
def test_a_mistyped_command_choice_or_flag_suggests_the_closest(capsys, argv, suggestion):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and suggestion in err[0], err


def test_a_closed_pipe_is_a_normal_end(monkeypatch, capsys):
    """`reslab models | head -5` ended with "error: [Errno 32] Broken pipe" and status 1."""
    process = subprocess.Popen([sys.executable, "-m", "reslab", "models", "resnet*"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    process.stdout.close()  # the reader is gone before the first line is written
    err = process.stderr.read().decode()
    assert process.wait(timeout=300) == 0 and err == "", err

    class ClosedPipe:  # in this process: help, and a command's output, into a closed pipe
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["models", "resnet20"]) == 0
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0 and capsys.readouterr().err == ""


def test_an_os_error_is_named_by_path_and_reason_without_its_errno(monkeypatch, capsys):
    import reslab.commands.models as models_command

    def denied(args):
        raise PermissionError(13, "Permission denied", "/data/cifar")

    monkeypatch.setattr(models_command, "run", denied)
    monkeypatch.delenv("RESLAB_DEBUG", raising=False)
    assert main(["models"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "reslab models: error: /data/cifar: permission denied; check its permissions or choose another path"
