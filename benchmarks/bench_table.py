"""Speed table: reslab's fastest setup against eager fp32 NCHW, training and inference.

For resnet20 and resnet56 (CIFAR, 32x32) and resnet18 and resnet50 (ImageNet, 224x224, small
batches so that the whole table takes a few minutes on a CPU), each candidate setup is timed
in turn with the baseline in one process (:func:`reslab.inference.bench.run_benchmark`); the
table shows the baseline, the best candidate and their ratio, as markdown.

    python benchmarks/bench_table.py                 # all four models, train and infer
    python benchmarks/bench_table.py --models resnet20 --modes infer --threads 2

Inference candidates fold BN into the convolutions and/or run bf16 weights in channels_last;
training candidates use bf16 autocast and/or channels_last (folding does not apply).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from reslab import create_model, model_info
from reslab.inference.bench import BASELINE, BenchSetup, run_benchmark
from reslab.precision import native_bf16
from reslab.train.state import cpu_name

CANDIDATES = {
    "infer": [BenchSetup("fp32", channels_last=True, fold_bn=True), BenchSetup("bf16", channels_last=True),
              BenchSetup("bf16", channels_last=True, fold_bn=True)],
    "train": [BenchSetup("fp32", channels_last=True), BenchSetup("bf16"), BenchSetup("bf16", channels_last=True)],
}
# (batch size, timed repeats, warm-up steps) per input size and mode: small ImageNet batches on CPU.
PLAN = {(32, "infer"): (256, 7, 2), (32, "train"): (128, 5, 2), (224, "infer"): (8, 5, 1), (224, "train"): (8, 3, 1)}
DEFAULT_MODELS = ("resnet20", "resnet56", "resnet18", "resnet50")


def measure_row(name: str, mode: str) -> dict:
    size = model_info(name).input_size
    batch_size, repeats, warmup = PLAN[(size, mode)]
    torch.manual_seed(0)
    model = create_model(name).eval()
    baseline, *candidates = run_benchmark(model, mode, [BASELINE, *CANDIDATES[mode]], batch_size=batch_size,
                                          input_size=size, repeats=repeats, warmup=warmup)
    best = max(candidates, key=lambda m: m.images_per_second)
    return {"model": name, "input": f"{size}x{size}", "batch": batch_size, "mode": mode,
            "baseline": baseline.images_per_second, "best": best.images_per_second,
            "ratio": best.images_per_second / baseline.images_per_second, "config": best.setup.label,
            "all": {m.setup.label: m.images_per_second / baseline.images_per_second for m in candidates}}


def markdown(rows: list[dict]) -> str:
    lines = ["| model | input | batch | mode | baseline img/s (eager fp32 NCHW) | reslab best img/s | ratio | config |",
             "|---|---|---|---|---:|---:|---:|---|"]
    lines += [f"| {r['model']} | {r['input']} | {r['batch']} | {r['mode']} | {r['baseline']:.1f} | {r['best']:.1f} | "
              f"{r['ratio']:.2f}x | {r['config']} |" for r in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--modes", nargs="+", choices=("train", "infer"), default=["infer", "train"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.time()
    print(f"torch {torch.__version__}, {cpu_name()} ({native_bf16(torch.device('cpu'))[1]}), {os.cpu_count()} CPUs, "
          f"{torch.get_num_threads()} threads, load average at start {os.getloadavg()[0]:.1f}", file=sys.stderr)
    rows = []
    for name in args.models:
        for mode in args.modes:
            rows.append(measure_row(name, mode))
            r = rows[-1]
            print(f"{name} {mode}: " + ", ".join(f"{k} {v:.2f}x" for k, v in r["all"].items()), file=sys.stderr)
    print(markdown(rows))
    print(f"\n{time.time() - start:.0f} s; load average at end {os.getloadavg()[0]:.1f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
