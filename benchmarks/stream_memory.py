"""Peak memory of the streaming data path: does it grow with the number of images?

    python benchmarks/make_image_folder.py --images 2000 --out /tmp/folder-2k
    python benchmarks/make_image_folder.py --images 20000 --out /tmp/folder-20k
    nice -n 10 python benchmarks/stream_memory.py --data /tmp/folder-2k --data /tmp/folder-20k

For each folder, a child process builds the run's data as ``reslab train`` does
(:func:`reslab.train.data.load_training_data`, streaming at 224 with ``--workers`` worker
processes) and takes ``--batches`` training batches of ``--batch-size`` (the same number for
every folder, so the figures compare the cost of the folder's size, not of a longer epoch).
Every 20 ms this process reads the memory of the child and its workers from /proc: the peak of
their summed RSS (resident pages, counting pages shared between the forked workers once per
process: an overestimate) and of their summed PSS (each shared page divided among the processes
that share it: the memory the tree really takes). Linux only.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path


def tree(root: int) -> list[int]:
    """``root`` and its descendants (from the ppid field of /proc/PID/stat)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            children.setdefault(ppid, []).append(int(name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of ``pid`` in KiB; (0, 0) once it is gone."""
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return 0, 0
    values = {line.split(":")[0]: int(line.split()[1]) for line in rollup[1:] if line.endswith("kB")}
    return values.get("Rss", 0), values.get("Pss", 0)


def child(args: argparse.Namespace) -> None:
    import torch

    from reslab.train.config import TrainConfig
    from reslab.train.data import load_training_data
    from reslab.train.distributed import DistributedEnv

    torch.set_num_threads(1)
    config = TrainConfig.from_recipe("imagenet", model="resnet18", data=str(args.data[0]), image_size=224,
                                     pipeline="stream", workers=args.workers, batch_size=args.batch_size,
                                     base_batch_size=args.batch_size, progress="quiet")
    data = load_training_data(config, DistributedEnv(), torch.device("cpu"))
    for _, _ in zip(range(args.batches), data.train):
        pass
    print(f"{len(data.train) * data.train.batch_size} training images per epoch", file=sys.stderr)


def measure(folder: Path, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", "--data", str(folder), "--batches", str(args.batches),
               "--batch-size", str(args.batch_size), "--workers", str(args.workers)]
    start = time.perf_counter()
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    peak_rss = peak_pss = peak_main = 0
    while process.poll() is None:
        sizes = [memory_kib(pid) for pid in tree(process.pid)]
        peak_rss = max(peak_rss, sum(r for r, _ in sizes))
        peak_pss = max(peak_pss, sum(p for _, p in sizes))
        peak_main = max(peak_main, sizes[0][0] if sizes else 0)
        time.sleep(0.02)
    stderr = process.stderr.read()
    if process.returncode:
        raise SystemExit(f"the child failed on {folder}:\n{stderr}")
    images = sum(len(files) for _, _, files in os.walk(folder))
    return {"folder": str(folder), "files": images, "peak_rss_mib": peak_rss / 1024, "peak_pss_mib": peak_pss / 1024,
            "main_rss_mib": peak_main / 1024, "seconds": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, action="append", required=True, help="a class-folder tree (repeat)")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    print(f"{'folder':28s} {'files':>7s} {'peak RSS, tree':>15s} {'peak PSS, tree':>15s} {'main RSS':>9s} {'time':>6s}")
    for folder in args.data:
        r = measure(folder, args)
        print(f"{r['folder']:28s} {r['files']:7,d} {r['peak_rss_mib']:11.0f} MiB {r['peak_pss_mib']:11.0f} MiB "
              f"{r['main_rss_mib']:5.0f} MiB {r['seconds']:5.1f}s", flush=True)
    load = os.getloadavg()
    print(f"{args.batches} batches of {args.batch_size} at 224x224, {args.workers} workers; load average "
          f"{load[0]:.1f} on {os.cpu_count()} cores", file=sys.stderr)


if __name__ == "__main__":
    main()
