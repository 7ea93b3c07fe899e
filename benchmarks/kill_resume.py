"""Kill `reslab train` at random moments, resume it until it finishes, and check that nothing was lost.

    python benchmarks/kill_resume.py                      # 24 trials on a slice of ../shared CIFAR-10
    python benchmarks/kill_resume.py --trials 6 --seed 1
    python benchmarks/kill_resume.py --mutant torn-writes # break the atomic writes: the checks must fail

Each trial trains ResNet-20 with a real `python -m reslab train` process (one thread, 3 epochs of
5 iterations of 32 of 200 CIFAR-10 images, 20 held out for validation, with stochastic depth,
dropout, mixup and an EMA of the weights, so that every random generator and running state must
be restored) and sends it SIGKILL at a moment drawn from a fixed-seed RNG: uniformly over an uninterrupted run's duration (anchor
"start"), or uniformly over the evaluation that follows an epoch's last step ("eval"), or over the
time after an epoch's summary line, when the metrics line, model files and checkpoint are written
("save"). Every other trial kills the resumed process too. Then `reslab train --resume DIR` runs
until the run finishes (the original command if the kill came before config.json existed).

Checked after every kill: checkpoint.pt, model.safetensors and best.safetensors, where they exist,
load; the run folder holds nothing else but the hidden temporary files of writes in flight
(.<name>.<random>.tmp), and a run folder still resolves to its model.safetensors. Checked at the
end, against an uninterrupted run with the same seed: model.safetensors and best.safetensors hold
bitwise the same tensors (torch.equal on each); metrics.jsonl has exactly one line per epoch and
steps.jsonl one per iteration, equal to the uninterrupted run's but for timings; so does
result.json; no temporary file is left; no traceback was printed.

The phase each kill hit is read from the killed process's output (its progress lines are flushed
as they are printed) and from what it left in the run folder. ``--mutant`` runs the trials with a
deliberately broken trainer (in-place writes, or log files not cut back on resume), to show that
the checks catch what they are meant to catch.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
CIFAR10_DIR = REPO.parent / "shared" / "datasets" / "cifar10"
EPOCHS, PER_EPOCH = 3, 5  # 200 images, 20 held out for validation: 180 in batches of 32 (the last, partial one dropped)
TRAIN_FLAGS = ("--epochs", str(EPOCHS), "--batch-size", "32", "--base-batch-size", "32", "--lr", "0.05",
               "--threads", "1", "--progress", "plain", "--log-interval", "1", "--no-tta-flip", "--eval-batch-size", "50",
               "--stochastic-depth", "0.7", "--dropout", "0.1", "--mixup", "0.2", "--ema-decay", "0.9", "--val", "20")
TIMING_FIELDS = {"img_per_s", "epoch_seconds", "eval_seconds", "wall_seconds"}
ANCHORS = ("start", "save", "eval")
STEP_LINE = re.compile(r"^epoch (\d+)/\d+ it (\d+):")
SUMMARY_LINE = re.compile(r"^epoch (\d+)/\d+ \| it (\d+) \|")
PROCESS_TIMEOUT = 180

# Launchers of deliberately broken trainers (never used by reslab itself): the checks must fail on them.
RUN_CLI = "import sys\nfrom reslab.cli import main\nsys.exit(main(sys.argv[1:]))\n"
MUTANTS = {
    # Writes in place, in pieces: the old file is gone before the new one is whole.
    "torn-writes": """
import time
import reslab.checkpoint

def write_in_place(path, data):
    data = bytes(data)
    with open(path, "wb") as f:
        for start in range(0, len(data), 1 << 16):
            f.write(data[start:start + (1 << 16)])
            f.flush()
            time.sleep(0.002)

reslab.checkpoint.atomic_write_bytes = write_in_place
""" + RUN_CLI,
    # Keeps the log lines written after the checkpoint on resume: the epoch they record is run again.
    "no-log-cutback": """
from reslab.train.progress import RunLog

RunLog.start = lambda self, resume_iteration: None
""" + RUN_CLI,
}


@dataclass
class KillSpec:
    """SIGKILL ``delay`` seconds after the anchor: the process's start, or the last step of
    ``epoch`` ('eval'), or the summary line of ``epoch`` ('save')."""

    anchor: str
    delay: float
    epoch: int = 1

    def describe(self) -> str:
        where = "process start" if self.anchor == "start" else f"{self.anchor} of epoch {self.epoch}"
        return f"{where} + {self.delay:.3f}s"


@dataclass
class Outcome:
    """One process: its exit status, output lines, stderr, and whether we killed it."""

    returncode: int
    lines: list[str]
    stderr: str
    killed: bool
    seconds: float
    line_times: list[float] = field(default_factory=list)


@dataclass
class Trial:
    index: int
    specs: list[KillSpec]
    phases: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    processes: int = 0

    @property
    def survived(self) -> bool:
        return not self.problems


# ------------------------------------------------------------------------------------------
# Running and killing


def train_command(data: Path, out: Path) -> list[str]:
    return ["train", "resnet20", "--data", str(data), "--out", str(out), *TRAIN_FLAGS]


def run_process(argv: list[str], env: dict, spec: Optional[KillSpec] = None, mutant: Optional[str] = None) -> Outcome:
    """Run ``reslab ARGV`` to its end, or SIGKILL it as ``spec`` says."""
    command = [sys.executable, "-c", MUTANTS[mutant], *argv] if mutant else [sys.executable, "-m", "reslab", *argv]
    start = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    lines: list[str] = []
    times: list[float] = []
    stderr: list[str] = []

    def read_stdout() -> None:
        for line in process.stdout:
            times.append(time.monotonic() - start)
            lines.append(line.rstrip("\n"))

    readers = [threading.Thread(target=read_stdout, daemon=True),
               threading.Thread(target=lambda: stderr.append(process.stderr.read()), daemon=True)]
    for reader in readers:
        reader.start()
    killed = False
    if spec is not None:
        while process.poll() is None and not _anchor_reached(spec, lines) and time.monotonic() - start < PROCESS_TIMEOUT:
            time.sleep(0.0005)
        if process.poll() is None:
            time.sleep(spec.delay)
            if process.poll() is None:
                process.kill()
                killed = True
    try:
        process.wait(timeout=max(1.0, PROCESS_TIMEOUT - (time.monotonic() - start)))
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    for reader in readers:
        reader.join(timeout=10)
    return Outcome(process.returncode, lines, "".join(stderr), killed, time.monotonic() - start, times)


def _anchor_reached(spec: KillSpec, lines: list[str]) -> bool:
    if spec.anchor == "start":
        return True
    last_iteration = spec.epoch * PER_EPOCH
    for line in reversed(lines):
        step, summary = STEP_LINE.match(line), SUMMARY_LINE.match(line)
        if spec.anchor == "eval" and step and int(step.group(2)) == last_iteration:
            return True
        if spec.anchor == "save" and summary and int(summary.group(1)) == spec.epoch:
            return True
    return False


# ------------------------------------------------------------------------------------------
# Checks


def run_files() -> tuple[str, ...]:
    from reslab.train.trainer import RUN_FILES

    return RUN_FILES


def check_after_kill(out: Path) -> list[str]:
    """What is wrong with a run folder after a kill: files that do not load, unknown files."""
    from reslab.checkpoint import load_model, partial_writes, resolve_checkpoint_path
    from reslab.train.state import load_training_state

    problems = []
    if not out.exists():
        return problems
    if (out / "checkpoint.pt").exists():
        try:
            load_training_state(out / "checkpoint.pt")
        except Exception as exc:  # noqa: BLE001 - any failure to load is what we look for
            problems.append(f"checkpoint.pt does not load: {exc}")
    for name in ("model.safetensors", "best.safetensors"):
        if (out / name).exists():
            try:
                load_model(out / name)
            except Exception as exc:  # noqa: BLE001
                problems.append(f"{name} does not load: {exc}")
    if (out / "model.safetensors").exists() and resolve_checkpoint_path(out) != out / "model.safetensors":
        problems.append(f"the run folder resolves to {resolve_checkpoint_path(out)}, not model.safetensors")
    known = set(run_files()) | {p.name for p in partial_writes(out, run_files())}
    stray = sorted(p.name for p in out.iterdir() if p.name not in known)
    if stray:
        problems.append(f"unexpected files in the run folder: {', '.join(stray)}")
    return problems


def phase_of_kill(outcome: Outcome, out: Path, earlier: set[str]) -> str:
    """Where the killed process was: from its last progress line and the files it left (the
    temporary files of writes in flight, other than the ``earlier`` ones a previous kill left)."""
    from reslab.checkpoint import partial_writes

    in_flight = sorted({".".join(p.name.split(".")[1:3]) for p in partial_writes(out, run_files()) if p.name not in earlier})
    if in_flight:
        return "writing " + " + ".join(in_flight)
    torn = [problem.split()[0] for problem in check_after_kill(out) if " does not load" in problem]
    if torn:  # only a trainer that writes in place (--mutant torn-writes) leaves these
        return "writing " + " + ".join(torn) + " in place"
    progress = [line for line in outcome.lines if STEP_LINE.match(line) or SUMMARY_LINE.match(line)]
    if not progress:
        return "start-up"
    step, summary = STEP_LINE.match(progress[-1]), SUMMARY_LINE.match(progress[-1])
    if step:
        return "evaluation" if int(step.group(2)) % PER_EPOCH == 0 else "training step"
    iteration = int(summary.group(2))
    saved = _saved_iteration(out)
    if saved == iteration:
        return "after the last checkpoint" if iteration == EPOCHS * PER_EPOCH else "after an epoch's checkpoint"
    logged = any(json.loads(line)["iteration"] == iteration for line in _complete_lines(out / "metrics.jsonl"))
    return "metrics line written, checkpoint not yet" if logged else "epoch end, before its metrics line"


def _saved_iteration(out: Path) -> Optional[int]:
    import torch

    try:
        return torch.load(out / "checkpoint.pt", weights_only=True)["progress"]["iteration"]
    except Exception:  # noqa: BLE001 - none yet, or (with a mutant) unreadable
        return None


def _complete_lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [line for line in path.read_text().split("\n")[:-1] if line.strip()]


def compare_with_reference(out: Path, reference: Path) -> list[str]:
    """What differs between a finished run and the uninterrupted reference run."""
    import torch
    from safetensors.torch import load_file

    from reslab.checkpoint import partial_writes

    problems = []
    for name in ("model.safetensors", "best.safetensors"):
        try:
            mine, theirs = load_file(out / name), load_file(reference / name)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"{name}: {exc}")
            continue
        differ = sorted(k for k in theirs if k not in mine or not torch.equal(mine[k], theirs[k]))
        if differ or mine.keys() != theirs.keys():
            problems.append(f"{name} differs from the uninterrupted run's in {len(differ)} tensors: {differ[:3]}")
    for name, expected in (("metrics.jsonl", list(range(EPOCHS))), ("steps.jsonl", list(range(1, EPOCHS * PER_EPOCH + 1)))):
        key = "epoch" if name == "metrics.jsonl" else "iteration"
        records = [json.loads(line) for line in _complete_lines(out / name)]
        got = [r[key] for r in records]
        if got != expected:
            problems.append(f"{name} records {key}s {got}, expected exactly {expected} (one line each)")
        elif _without_timings(records) != _without_timings(json.loads(line) for line in _complete_lines(reference / name)):
            problems.append(f"{name} differs from the uninterrupted run's")
    try:
        if _without_timings([json.loads((out / "result.json").read_text())]) != \
                _without_timings([json.loads((reference / "result.json").read_text())]):
            problems.append("result.json differs from the uninterrupted run's")
    except (OSError, ValueError) as exc:
        problems.append(f"result.json: {exc}")
    leftovers = partial_writes(out, run_files())
    if leftovers:
        problems.append(f"temporary files left after the run finished: {[p.name for p in leftovers]}")
    return problems


def _without_timings(records) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in records]


# ------------------------------------------------------------------------------------------
# Trials


@dataclass
class Reference:
    out: Path
    seconds: float  # wall time of the whole process
    eval_window: float  # longest time from an epoch's last step line to its summary line
    save_window: float  # longest time from a summary line to the next step line (or the exit)


def reference_run(data: Path, workdir: Path, env: dict) -> Reference:
    out = workdir / "reference"
    outcome = run_process(train_command(data, out), env)
    if outcome.returncode != 0:
        raise RuntimeError(f"the uninterrupted run failed (status {outcome.returncode}): {outcome.stderr[-2000:]}")
    eval_window = save_window = 0.0
    for i, line in enumerate(outcome.lines[:-1]):
        step, summary = STEP_LINE.match(line), SUMMARY_LINE.match(line)
        gap = outcome.line_times[i + 1] - outcome.line_times[i]
        if step and int(step.group(2)) % PER_EPOCH == 0:
            eval_window = max(eval_window, gap)
        if summary:
            save_window = max(save_window, gap)
    return Reference(out, outcome.seconds, eval_window, save_window)


def plan_trials(trials: int, seed: int, reference: Reference) -> list[list[KillSpec]]:
    """The kills of each trial, from a fixed-seed RNG: the first kill's anchor cycles through
    start/save/eval; every other trial also kills the resumed process (anchored at its start)."""
    rng = random.Random(seed)

    def draw(anchor: str) -> KillSpec:
        window = {"start": reference.seconds, "eval": reference.eval_window, "save": reference.save_window}[anchor]
        return KillSpec(anchor, rng.uniform(0, window), rng.randint(1, EPOCHS))

    plans = []
    for index in range(trials):
        specs = [draw(ANCHORS[index % len(ANCHORS)])]
        if index % 2:
            specs.append(draw("start"))
        plans.append(specs)
    return plans


def run_trial(index: int, specs: list[KillSpec], data: Path, workdir: Path, reference: Path, env: dict,
              mutant: Optional[str] = None) -> Trial:
    from reslab.checkpoint import partial_writes

    trial = Trial(index, specs)
    out = workdir / f"trial{index}"
    pending = list(specs)
    for _ in range(len(specs) + 2):  # the kills, then the resume that finishes (one spare)
        argv = ["train", "--resume", str(out)] if (out / "config.json").exists() else train_command(data, out)
        spec = pending.pop(0) if pending else None
        earlier = {p.name for p in partial_writes(out, run_files())} if out.exists() else set()
        outcome = run_process(argv, env, spec, mutant)
        trial.processes += 1
        if "Traceback" in outcome.stderr:
            trial.problems.append(f"a traceback: {outcome.stderr.strip().splitlines()[-1]}")
        if outcome.killed:
            trial.phases.append(phase_of_kill(outcome, out, earlier))
            trial.problems += check_after_kill(out)
            if trial.problems:
                return trial
            continue
        if outcome.returncode != 0:
            trial.problems.append(f"`reslab {' '.join(argv[:2])}` failed with status {outcome.returncode}: "
                                  f"{outcome.stderr.strip().splitlines()[-1] if outcome.stderr.strip() else ''}")
            return trial
        if spec is not None:
            trial.phases.append("not hit (the run finished first)")
        if not pending:
            trial.problems += compare_with_reference(out, reference)
            return trial
    trial.problems.append("the run did not finish")
    return trial


def child_environment(cache: Path) -> dict:
    src = str(REPO / "src")
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "OMP_NUM_THREADS": "1", "RESLAB_CACHE": str(cache), "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": src + (os.pathsep + path if path else "")}


def copy_slice(dest: Path, train_per_class: int = 20, test_per_class: int = 10) -> Path:
    """The first images of each class of each split of the real CIFAR-10, as class folders."""
    for split, n in (("train", train_per_class), ("test", test_per_class)):
        for class_dir in sorted((CIFAR10_DIR / split).iterdir()):
            (dest / split / class_dir.name).mkdir(parents=True, exist_ok=True)
            for image in sorted(class_dir.iterdir())[:n]:
                shutil.copyfile(image, dest / split / class_dir.name / image.name)
    return dest


def summarise(trials: list[Trial]) -> str:
    phases = Counter(phase for trial in trials for phase in trial.phases)
    kills = sum(1 for trial in trials for phase in trial.phases if not phase.startswith("not hit"))
    lines = [f"{sum(t.survived for t in trials)} of {len(trials)} trials survived ({kills} kills, "
             f"{sum(t.processes for t in trials)} processes); data lost or corrupted in {sum(not t.survived for t in trials)}",
             "", "| phase hit by the kill | kills |", "|---|---:|"]
    lines += [f"| {phase} | {count} |" for phase, count in sorted(phases.items(), key=lambda kv: -kv[1])]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=24, help="number of trials")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--data", type=Path, default=None, help="class-folder data set (default: a slice of ../shared CIFAR-10)")
    parser.add_argument("--mutant", choices=tuple(MUTANTS), default=None, help="run a deliberately broken trainer")
    parser.add_argument("--keep", action="store_true", help="keep the working folder")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="reslab-kill-"))
    try:
        data = args.data or copy_slice(workdir / "data")
        env = child_environment(workdir / "cache")
        started = time.monotonic()
        reference = reference_run(data, workdir, env)
        print(f"uninterrupted run: {reference.seconds:.1f}s (evaluation window {reference.eval_window:.3f}s, "
              f"save window {reference.save_window:.3f}s); {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}", flush=True)
        trials = []
        for index, specs in enumerate(plan_trials(args.trials, args.seed, reference)):
            trial = run_trial(index, specs, data, workdir, reference.out, env, args.mutant)
            trials.append(trial)
            kills = "; ".join(f"{spec.describe()} -> {phase}" for spec, phase in zip(specs, trial.phases))
            print(f"trial {index:2d}: {kills}; {trial.processes} processes: "
                  f"{'OK' if trial.survived else 'FAILED: ' + ' | '.join(trial.problems)}", flush=True)
        print(f"\n{summarise(trials)}\n\n{time.monotonic() - started:.0f}s in all")
        return 0 if all(t.survived for t in trials) else 1
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
