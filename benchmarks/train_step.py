"""The bare ResNet-20 training step: page faults, batch-norm kernels, profile.

Times the channels_last training step of ResNet-20 (``reslab bench --mode train``'s step:
batch 128, random data) in fresh processes that take turns for ``--repeats`` rounds, in the
precision ``reslab train`` picks here (``--precision auto``: bf16 autocast on CPUs with bf16
instructions, fp32 on others; see :mod:`reslab.precision`) or the one ``--precision`` names.

- Page faults: glibc hands large freed buffers back to the kernel, so each step faults its
  activations in again (see :mod:`reslab.train.memory`). Eager and compiled, with glibc's
  defaults and with ``keep_freed_memory()``, faults per step and images/s.
- ``--batchnorm``: the compiled step with ``nn.BatchNorm2d`` and with ``reslab train --moment-bn``'s
  ``MomentBatchNorm2d`` (see :mod:`reslab.train.batchnorm`); the ratio of each round, since
  this machine's speed drifts more between rounds than the two differ.
- ``--inductor NAME=VALUE``: the compiled step as the fast recipe runs it (``MomentBatchNorm2d``)
  with inductor's defaults and with one of its settings changed (``torch._inductor.config``,
  e.g. ``cpp_wrapper=True``: the step's wrapper in C++ instead of Python); ratios per round, as
  ``--batchnorm``.
- ``--profile``: a torch.profiler table of the compiled step as the fast recipe runs it
  (``MomentBatchNorm2d``), each fused kernel on its own row, then the step's time split into
  convolutions, inductor's fused kernels and the rest; the images/s the convolutions alone
  would allow; and the fused kernels' time against the least memory traffic of batch norm
  (input read twice and output written once forward; two tensors read twice and one written
  backward) at this machine's copy rate.

    python benchmarks/train_step.py --repeats 3
    python benchmarks/train_step.py --batchnorm --repeats 8
    python benchmarks/train_step.py --inductor cpp_wrapper=True --repeats 8
    python benchmarks/train_step.py --profile
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys

import torch

from reslab.precision import PRECISIONS, resolve_precision

STEP = """
import json, resource, sys, time
import torch
from reslab import create_model
from reslab.inference.bench import BenchSetup, make_step
from reslab.train.memory import keep_freed_memory
from reslab.train.batchnorm import use_moment_batch_norm
keep, compiled, steps, profile, moment = (sys.argv[1] == "1", sys.argv[2] == "1", int(sys.argv[3]), sys.argv[4] == "1",
                                          sys.argv[5] == "1")
precision = sys.argv[6]
inductor = json.loads(sys.argv[7])  # settings of torch._inductor.config, {"cpp.threads": 2} style
if keep:
    keep_freed_memory()
torch.manual_seed(0)
model = create_model("resnet20")
if moment:
    use_moment_batch_norm(model)
step = make_step(model, "train", BenchSetup(precision=precision, channels_last=True), 128, 32,
                 torch.device("cpu"))  # the training step `reslab bench --mode train` times
if profile:  # one eager step records the size of each batch norm's input, for the bandwidth bound below
    bn_bytes = []
    hooks = [m.register_forward_hook(lambda m, args, out: bn_bytes.append(args[0].numel() * args[0].element_size()))
             for m in step.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    step()
    for hook in hooks:
        hook.remove()
if compiled:
    import torch._inductor.config
    if profile:
        inductor["cpp.enable_kernel_profile"] = True  # each fused kernel its own profiler row
    for name, value in inductor.items():
        *groups, leaf = name.split(".")
        config = torch._inductor.config
        for group in groups:
            config = getattr(config, group)
        setattr(config, leaf, value)
    step.model = torch.compile(step.model)
for _ in range(10):
    step()
if profile:
    from torch.profiler import profile as profiler
    with profiler() as trace:
        for _ in range(steps):
            step()
    events = trace.key_averages()
    print(events.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=40))
    def ms(keep):  # milliseconds per step in the profiler rows whose names `keep` accepts
        return sum(e.self_cpu_time_total for e in events if keep(e.key)) / 1e3 / steps
    conv_forward, conv_backward = ms(lambda k: k == "aten::mkldnn_convolution"), ms(lambda k: k == "aten::convolution_backward")
    fused, total = ms(lambda k: "cpp_fused" in k), ms(lambda k: True)
    print(f"per step of 128 images: {total:.1f} ms; convolutions {conv_forward + conv_backward:.1f} ms (forward "
          f"{conv_forward:.1f}, backward {conv_backward:.1f}); inductor's fused kernels (batch norm, ReLU, additions) "
          f"{fused:.1f} ms; the rest {total - conv_forward - conv_backward - fused:.1f} ms")
    print(f"convolutions alone: at most {128e3 / (conv_forward + conv_backward):.0f} img/s if every other kernel took no time")
    source = torch.empty(max(bn_bytes), dtype=torch.uint8)  # the largest activation, as the step's kernels see them
    target = torch.empty_like(source)
    for _ in range(10):
        target.copy_(source)
    start = time.perf_counter()
    for _ in range(100):
        target.copy_(source)
    copy_rate = 2 * source.numel() * 100 / (time.perf_counter() - start)  # bytes read + written per second
    least_bytes = 8 * sum(bn_bytes)
    least = least_bytes / copy_rate * 1e3
    print(f"batch norm moves at least {least_bytes / 1e6:.0f} MB per step ({len(bn_bytes)} layers; each input read "
          f"twice and its output written once forward, two tensors read twice and one written backward), "
          f"{least:.1f} ms at this machine's copy rate of {copy_rate / 1e9:.1f} GB/s: the fused kernels take "
          f"{fused / least:.1f}x that; with them at that rate the step would run at most "
          f"{128e3 / (total - fused + least):.0f} img/s")
    sys.exit()
faults, start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
for _ in range(steps):
    step()
seconds = time.perf_counter() - start
print(json.dumps({"img_per_s": steps * 128 / seconds,
                  "faults_per_step": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps}))
"""


def run_step(keep: bool, compiled: bool, steps: int, precision: str, profile: bool = False, moment: bool = False,
             inductor: dict | None = None) -> str:
    flags = [str(int(flag)) for flag in (keep, compiled)] + [str(steps)] + [str(int(flag)) for flag in (profile, moment)]
    return subprocess.run([sys.executable, "-c", STEP, *flags, precision, json.dumps(inductor or {})], check=True,
                          capture_output=True, text=True).stdout


def measure(keep: bool, compiled: bool, steps: int, precision: str, moment: bool = False,
            inductor: dict | None = None) -> dict:
    return json.loads(run_step(keep, compiled, steps, precision, moment=moment, inductor=inductor).strip().splitlines()[-1])


def compare(title: str, settings: dict[str, dict], steps: int, repeats: int, precision: str) -> None:
    """The compiled step (with keep_freed_memory()) in two settings, each a dict of ``measure``'s
    keywords, in fresh processes taking turns; the second's speed-up over the first per round."""
    (base, base_kwargs), (other, other_kwargs) = settings.items()
    rounds = []
    for _ in range(repeats):
        rounds.append({name: measure(True, True, steps, precision, **kwargs)["img_per_s"]
                       for name, kwargs in ((base, base_kwargs), (other, other_kwargs))})
    ratios = sorted(r[other] / r[base] for r in rounds)
    middle = len(rounds) // 2
    print(f"ResNet-20 compiled training step, {precision} channels_last, batch 128, {os.cpu_count()} cores, {title}; "
          f"{repeats} rounds of {steps} steps, each round both settings in fresh processes")
    for name in (base, other):
        speeds = sorted(r[name] for r in rounds)
        print(f"  {name:24s} median {speeds[middle]:5.0f} img/s  (range {speeds[0]:.0f}-{speeds[-1]:.0f})")
    print(f"  speed-up per round: median {ratios[middle]:.2f}x, range {ratios[0]:.2f}-{ratios[-1]:.2f}x "
          f"({sum(r > 1 for r in ratios)} of {repeats} rounds faster)")


def inductor_setting(text: str) -> dict:
    """``NAME=VALUE`` -> {NAME: VALUE} for a setting that torch._inductor.config has; VALUE a Python literal."""
    import torch._inductor.config

    name, equals, value = text.partition("=")
    if not equals:
        raise argparse.ArgumentTypeError(f"give NAME=VALUE, e.g. cpp_wrapper=True; got {text!r}")
    config = torch._inductor.config
    for part in name.split("."):
        if not hasattr(config, part):
            raise argparse.ArgumentTypeError(f"torch._inductor.config has no setting {name!r}")
        config = getattr(config, part)
    try:
        return {name: ast.literal_eval(value)}
    except (ValueError, SyntaxError):
        raise argparse.ArgumentTypeError(f"the value of {name} must be a Python literal (True, 512, 'avx512'), "
                                         f"got {value!r}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="timed steps per measurement (after 10 untimed)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each setting is timed once per round, in turn")
    parser.add_argument("--profile", action="store_true",
                        help="instead, print a torch.profiler table of the compiled step as the trainer runs it")
    parser.add_argument("--batchnorm", action="store_true",
                        help="instead, compare the compiled step with nn.BatchNorm2d and with MomentBatchNorm2d")
    parser.add_argument("--inductor", type=inductor_setting, metavar="NAME=VALUE",
                        help="instead, compare the compiled step with inductor's defaults and with this setting of "
                             "torch._inductor.config changed, e.g. cpp_wrapper=True")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="the step's precision; auto: what reslab train picks on this CPU")
    args = parser.parse_args()
    precision = resolve_precision(args.precision, torch.device("cpu"))[0]
    if args.profile:
        print(run_step(True, True, args.steps, precision, profile=True, moment=True))
        return
    if args.batchnorm:
        compare("batch norm layers", {"nn.BatchNorm2d": {}, "MomentBatchNorm2d": {"moment": True}},
                args.steps, args.repeats, precision)
        return
    if args.inductor:
        (name, value), = args.inductor.items()
        compare("MomentBatchNorm2d", {"inductor's defaults": {"moment": True},
                                      f"{name}={value!r}": {"moment": True, "inductor": args.inductor}},
                args.steps, args.repeats, precision)
        return
    settings = [(compiled, keep) for compiled in (False, True) for keep in (False, True)]
    results: dict[tuple, list[dict]] = {s: [] for s in settings}
    for _ in range(args.repeats):
        for compiled, keep in settings:
            results[(compiled, keep)].append(measure(keep, compiled, args.steps, precision))
    print(f"ResNet-20 training step, {precision} channels_last, batch 128, {os.cpu_count()} cores; "
          f"median of {args.repeats} rounds of {args.steps} steps")
    print(f"  {'step':10s} {'malloc':22s} {'page faults/step':>17s} {'img/s':>7s}")
    for compiled in (False, True):
        medians = {}
        for keep in (False, True):
            rows = sorted(results[(compiled, keep)], key=lambda r: r["img_per_s"])
            middle = rows[len(rows) // 2]
            medians[keep] = middle["img_per_s"]
            print(f"  {'compiled' if compiled else 'eager':10s} {'keep_freed_memory()' if keep else 'glibc defaults':22s} "
                  f"{middle['faults_per_step']:17.0f} {middle['img_per_s']:7.0f}")
        print(f"  {'':10s} {'speed-up':22s} {'':17s} {medians[True] / medians[False]:6.2f}x")


if __name__ == "__main__":
    main()
