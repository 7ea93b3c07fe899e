"""benchmarks/compare_runs.py: the per-phase epoch times and training-error differences that
experiments/fast-recipe quotes, read from run folders."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from reslab.train.config import TrainConfig
from reslab.train.state import write_config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import compare_runs  # noqa: E402

ITERATIONS_PER_EPOCH = 390


def fake_run(folder: Path, small_crop_part: float, seconds: list[float], errors: list[float],
             single_view: float | None = None) -> Path:
    folder.mkdir()
    config = TrainConfig.from_recipe("fast", model="resnet20", data="data", out=str(folder), epochs=len(seconds),
                                     small_crop_part=small_crop_part)
    write_config(folder, config, {})
    (folder / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": i, "iteration": (i + 1) * ITERATIONS_PER_EPOCH, "epoch_seconds": s, "train_error": e}) + "\n"
        for i, (s, e) in enumerate(zip(seconds, errors))))
    (folder / "result.json").write_text(json.dumps({"test_accuracy": 0.9176}))
    if single_view is not None:
        (folder / "eval").mkdir()
        (folder / "eval" / "eval.json").write_text(json.dumps({"accuracy_pct": single_view}))
    return folder


def test_phases_follow_each_runs_small_crop_part(tmp_path: Path) -> None:
    recipe = fake_run(tmp_path / "a", 0.5, [10, 20, 30, 50], [0.5, 0.4, 0.2, 0.1], single_view=90.33)
    longer = fake_run(tmp_path / "b", 0.75, [10, 20, 30, 50], [0.5, 0.45, 0.3, 0.1])
    a = compare_runs.summarise(compare_runs.read_run(recipe))
    b = compare_runs.summarise(compare_runs.read_run(longer))
    assert (a["small_epochs"], a["small_mean"], a["full_mean"]) == (2, 15, 40)
    assert (b["small_epochs"], b["small_mean"], b["full_mean"]) == (3, 20, 50)
    assert a["training_seconds"] == 110 and a["train_error"] == pytest.approx(10)
    assert a["accuracy"] == pytest.approx(91.76) and a["single_view"] == 90.33 and b["single_view"] is None


def test_prints_a_table_and_the_differences_per_epoch(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    first = fake_run(tmp_path / "a", 0.5, [10, 20, 30, 50], [0.5, 0.4, 0.2, 0.1])
    second = fake_run(tmp_path / "b", 0.75, [10, 20, 30, 50], [0.5, 0.45, 0.3, 0.1])
    compare_runs.main([str(first), str(second)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].startswith(f"| {first} | 2 | 15.0 / 40.0 | 110 | 10.00% | 91.76% |")
    assert lines[-1].endswith("[0.0, 5.0, 10.0, 0.0]")


def test_refuses_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="is not a finished run folder of reslab train"):
        compare_runs.main([str(tmp_path)])


def test_a_torn_evaluation_file_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "a", 0.5, [10, 20, 30, 50], [0.5, 0.4, 0.2, 0.1], single_view=90.33)
    (run / "eval" / "eval.json").write_text('{"accuracy_pct": 90.')
    with pytest.raises(SystemExit, match="is not a finished run folder of reslab train"):
        compare_runs.main([str(run)])
