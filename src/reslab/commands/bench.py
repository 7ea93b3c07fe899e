HELP = """Benchmark training or inference speed: images/s, latency per batch, peak step memory.

MODEL is a registered model name (see `reslab models`) or a checkpoint (model file or run
folder; write ./resnet20 for a run folder named like a model). The chosen setup (--precision, --channels-last, --fold-bn) is always measured beside
the same model run eager, fp32, NCHW in the same process (the baseline), timed steps taken in
turn, and the speed-up is printed as a ratio. Warm-up steps are not timed; each figure is the
median of --repeats steps. Peak memory is the extra memory one step needs (CUDA: allocated
tensors; CPU: growth of the peak resident set).
"""

import argparse

from reslab.argtypes import nonnegative_int, positive_int, thread_count


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="registered model name or checkpoint path")
    parser.add_argument("--mode", choices=("train", "infer"), default="infer", help="what one timed step does")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="images per step")
    parser.add_argument("--input-size", type=positive_int, default=None, help="image side (default: the model's)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="bf16: weights and inputs in bf16 for infer, autocast for train")
    parser.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    parser.add_argument("--fold-bn", action="store_true", help="fold BN into the convolutions (infer only)")
    parser.add_argument("--repeats", type=positive_int, default=10, help="timed steps per setup (median reported)")
    parser.add_argument("--warmup", type=nonnegative_int, default=3, help="untimed steps per setup first")
    parser.add_argument("--threads", type=thread_count, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--json", action="store_true", help="print the measurements as JSON")


def load_benchmark_model(name_or_path: str):
    """(model, input size) of a registered name or, failing that, a checkpoint path."""
    from pathlib import Path

    from reslab.checkpoint import load_model
    from reslab.registry import create_model, list_models, model_info

    if name_or_path in list_models() or not Path(name_or_path).exists():
        return create_model(name_or_path).eval(), model_info(name_or_path).input_size  # unknown: close matches
    model, card = load_model(name_or_path, with_card=True)
    return model, card.input_size


def run(args: argparse.Namespace) -> int:
    import json

    import torch

    from reslab.inference.bench import BenchSetup, compare_with_baseline
    from reslab.inference.predict import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model, input_size = load_benchmark_model(args.model)
    setup = BenchSetup(args.precision, args.channels_last, args.fold_bn)
    baseline, measured = compare_with_baseline(
        model, args.mode, setup, batch_size=args.batch_size, input_size=args.input_size or input_size,
        device=device, repeats=args.repeats, warmup=args.warmup)
    ratio = measured.images_per_second / baseline.images_per_second
    if args.json:
        print(json.dumps({"model": args.model, "device": str(device), "threads": torch.get_num_threads(),
                          "baseline": baseline.to_dict(), "measured": measured.to_dict(), "speedup": ratio}, indent=1))
        return 0
    print(f"{args.model} {args.mode}, batch {args.batch_size} at {args.input_size or input_size}px on {device} "
          f"({torch.get_num_threads()} threads), median of {args.repeats} steps after {args.warmup} warm-up")
    for m in (baseline, measured):
        memory = "n/a" if m.peak_memory_bytes is None else f"{m.peak_memory_bytes / 2**20:.0f} MiB"
        print(f"  {m.setup.label:<32} {m.images_per_second:10.1f} img/s  {m.latency_ms:9.1f} ms/batch  peak step memory {memory}")
    print(f"  speed-up over eager fp32 NCHW: {ratio:.2f}x")
    return 0
