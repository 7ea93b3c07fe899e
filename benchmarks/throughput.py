"""Training throughput, end to end (data + step), of the baseline loop and of ``reslab train``,
measured in one run on one machine.

Three loops train ResNet-20 on CIFAR-10 for ``--warmup`` iterations, then are timed over
``--iterations`` more:

* ``baseline``: :mod:`baseline_loop` (per-image Pillow augmentation in a 2-worker DataLoader,
  fp32, NCHW, batch 128);
* ``reslab fast``: ``reslab train resnet20`` with the fast recipe's settings (batch 128, the
  precision ``auto`` picks on this CPU: bf16 autocast where it has bf16 instructions, fp32
  elsewhere; channels_last, whole-batch tensor augmentation), in one process;
* ``reslab paper``: the same trainer with the paper recipe (also batch 128, fewer extras);
* with ``--processes N``: also the fast recipe under ``torchrun --nproc-per-node N`` with
  ``--threads 1`` (on a few cores, N one-thread processes can beat one N-thread process: small
  convolutions parallelise poorly across threads).

The reslab numbers come from the trainer itself (``train()``, its ``steps.jsonl`` intervals),
not from a copy of its loop. Test-time views are turned off (they cost evaluation time only), and
so are the fast recipe's small crops (its first epochs train on 24x24 crops): every loop here
trains on full-size 32x32 images, so their images/s compare like with like. The
fast recipe compiles its model (``--compile``) even in these short runs: the compiling happens in
the warm-up iterations, which are not timed (a full run pays it once, about half a minute).

    python benchmarks/throughput.py --data ../shared/datasets/cifar10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch



def baseline_speed(data: str, iterations: int, warmup: int, threads: int) -> float:
    """Images/s of :mod:`baseline_loop`, run in a fresh process: the trainer changes process-wide
    settings (threads, glibc's malloc thresholds) that the baseline must not inherit."""
    command = [sys.executable, str(Path(__file__).resolve().parent / "baseline_loop.py"), "--data", data,
               "--iterations", str(iterations), "--warmup", str(warmup), "--threads", str(threads)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return float(output.split("baseline loop:")[1].split()[0])


def reslab_speed(data: str, recipe: str, iterations: int, warmup: int, **overrides) -> float:
    """Images/s of ``reslab train resnet20 --recipe RECIPE`` over the iterations after the warm-up."""
    from reslab.train import TrainConfig, train

    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig.from_recipe(recipe, model="resnet20", data=data, out=out, iterations=warmup + iterations,
                                         log_interval=warmup, tta_flip=False, tta_translate=0, progress="quiet",
                                         compile_min_iterations=0, small_crop=0, small_crop_part=0.0, **overrides)
        train(config)
        return speed_after_warmup(Path(out) / "steps.jsonl")


def reslab_ddp_speed(data: str, processes: int, iterations: int, warmup: int) -> float:
    """Images/s (all processes together) of ``torchrun --nproc-per-node N -m reslab train resnet20``
    with one thread per process, over the iterations after the warm-up."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
                   "-m", "reslab", "train", "resnet20", "--data", data, "--out", str(out),
                   "--iterations", str(warmup + iterations), "--log-interval", str(warmup), "--no-tta-flip",
                   "--small-crop", "0", "--small-crop-part", "0", "--progress", "quiet", "--threads", "1"]
        subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        return speed_after_warmup(out / "steps.jsonl")


def speed_after_warmup(steps_file: Path) -> float:
    """Images/s over a run's steps.jsonl intervals (logged every --warmup iterations, so all of
    equal size) after the first one, the warm-up: total images over total seconds."""
    intervals = [json.loads(line) for line in steps_file.read_text().splitlines()][1:]
    return len(intervals) / sum(1 / s["img_per_s"] for s in intervals)


def cpu_name() -> str:
    from reslab.train.state import cpu_name as name

    return name()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/datasets/cifar10")
    parser.add_argument("--iterations", type=int, default=30, help="timed iterations per loop")
    parser.add_argument("--warmup", type=int, default=5, help="untimed iterations first (and the logging interval)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="time every loop this many times, in turn, and keep each loop's best (for shared machines)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads for every loop; 0 = torch's default")
    parser.add_argument("--ablations", action="store_true",
                        help="also time the fast recipe without compiling, with --deterministic, in the precision "
                             "auto did not pick, and in fp32 NCHW")
    parser.add_argument("--fast-batch-sizes", type=lambda t: [int(b) for b in t.split(",")], default=[],
                        metavar="B,B", help="also time the fast recipe at these batch sizes (lr scaled linearly)")
    parser.add_argument("--processes", type=int, default=0,
                        help="also time the fast recipe as this many one-thread torchrun processes (0 = no)")
    parser.add_argument("--json", metavar="FILE", help="also write the numbers to FILE")
    args = parser.parse_args()
    if args.iterations % args.warmup:
        parser.error("--iterations must be a multiple of --warmup (steps.jsonl logs every --warmup iterations)")

    from reslab.data import load_dataset
    from reslab.precision import native_bf16, resolve_precision

    if args.threads:
        torch.set_num_threads(args.threads)
    load_dataset(args.data, "train", progress=False)  # decode once into the cache before any timing
    precision = resolve_precision("auto", torch.device("cpu"))[0]
    runs = [(f"fast recipe (auto: {precision}, channels_last, compiled, batch 128)", "fast", {}),
            (f"paper recipe (auto: {precision}, channels_last, batch 128)", "paper", {})]
    if args.ablations:
        other = "fp32" if precision == "bf16" else "bf16"
        runs += [("fast recipe --no-compile", "fast", {"compile": False}),
                 ("fast recipe --deterministic", "fast", {"deterministic": True}),
                 (f"fast recipe --precision {other}", "fast", {"precision": other}),
                 ("fast recipe --precision fp32 --no-channels-last", "fast", {"precision": "fp32", "channels_last": False})]
    runs += [(f"fast recipe at batch {b}", "fast", {"batch_size": b}) for b in args.fast_batch_sizes]
    baseline_name = "baseline (Pillow per image, 2 workers, fp32 NCHW, batch 128)"
    speeds: dict[str, list[float]] = {baseline_name: [], **{f"reslab train, {name}": [] for name, _, _ in runs}}
    ddp_name = f"reslab train, fast recipe, torchrun {args.processes} processes x 1 thread"
    if args.processes:
        speeds[ddp_name] = []
    for _ in range(args.repeats):
        speeds[baseline_name].append(baseline_speed(args.data, args.iterations, args.warmup, args.threads))
        for name, recipe, overrides in runs:
            speeds[f"reslab train, {name}"].append(reslab_speed(
                args.data, recipe, args.iterations, args.warmup, threads=args.threads, **overrides))
        if args.processes:
            speeds[ddp_name].append(reslab_ddp_speed(args.data, args.processes, args.iterations, args.warmup))
    best = {name: max(values) for name, values in speeds.items()}
    machine = (f"{cpu_name()} ({native_bf16(torch.device('cpu'))[1]}), {os.cpu_count()} cores, "
               f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, "
               f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.1f} at the end")
    print(f"machine: {machine}")
    print(f"ResNet-20 training, images/s end to end over {args.iterations} iterations after {args.warmup} of warm-up"
          + (f", best of {args.repeats}" if args.repeats > 1 else "") + ":")
    for name, speed in best.items():
        print(f"  {name:70s} {speed:7.0f} img/s  {speed / best[baseline_name]:4.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "images_per_s": speeds}, indent=1))


if __name__ == "__main__":
    main()
