"""How close ResNet-20's convolutions run to this CPU's matrix-multiply rate.

Times a 2048 x 2048 fp32 matmul (about the best rate oneDNN/MKL reach on these cores) and the
3x3 convolutions of ResNet-20's three stages (16 channels at 32x32, 32 at 16x16, 64 at 8x8;
batch 128), forward and forward + backward, in NCHW and channels_last, and prints each one's
GFLOP/s. On a CPU without bf16 instructions the fp32 training step is mostly these
convolutions (``benchmarks/train_step.py --profile``), so their rate bounds the whole step. The
last two lines are the images/s ResNet-20's training would reach if its 18 stage convolutions
(six of each shape; the stem and the classifier left out) ran at the faster layout's measured
rate, then at the matmul's rate, and nothing else took any time. The second needs no timing of
the convolutions, whose rates drift from run to run, only their arithmetic (255 MFLOP per
training image: 3x the forward's, for the two backward products).

    python experiments/cpu-throughput/conv_efficiency.py [--precision fp32|bf16]
"""

from __future__ import annotations

import argparse
import time

import torch

from reslab.precision import cpu_flags


def seconds(fn, repeats: int) -> float:
    """Best time of one call over ``repeats`` rounds of 5 calls (after 2 untimed)."""
    fn(), fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(5):
            fn()
        best = min(best, (time.perf_counter() - start) / 5)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    torch.manual_seed(0)
    a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    peak = 2 * 2048 ** 3 / seconds(lambda: a @ b, args.repeats) / 1e9
    flags = sorted(f for f in cpu_flags() if f in ("avx512f", "avx512_bf16", "amx_bf16"))
    print(f"{args.precision}, {torch.get_num_threads()} threads, CPU flags {', '.join(flags) or 'none of avx512f/bf16/amx'}")
    print(f"matmul 2048 x 2048: {peak:.0f} GFLOP/s")
    seconds_per_image, training_flops = 0.0, 0.0  # per image
    print(f"{'3x3 conv, batch 128':28s} {'layout':14s} {'forward':>18s} {'forward + backward':>24s}")
    for channels, size in ((16, 32), (32, 16), (64, 8)):
        best = 0.0
        for layout in (torch.contiguous_format, torch.channels_last):
            x = torch.randn(128, channels, size, size, dtype=dtype).to(memory_format=layout).requires_grad_()
            conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False).to(dtype=dtype, memory_format=layout)
            flops = 2 * 128 * channels * channels * 9 * size * size
            grad = torch.randn_like(conv(x))

            def train() -> None:
                x.grad = conv.weight.grad = None
                conv(x).backward(grad)

            with torch.no_grad():
                forward = flops / seconds(lambda: conv(x), args.repeats) / 1e9
            both = 3 * flops / seconds(train, args.repeats) / 1e9
            name = "channels_last" if layout is torch.channels_last else "NCHW"
            print(f"{f'{channels} channels at {size}x{size}':28s} {name:14s} {forward:6.0f} GF/s {forward / peak:4.0%}"
                  f"   {both:10.0f} GF/s {both / peak:4.0%}")
            best = max(best, both)
        stage_flops = 6 * 3 * flops / 128  # six such convolutions, forward and two backward products, per image
        seconds_per_image += stage_flops / (best * 1e9)
        training_flops += stage_flops
    print(f"ResNet-20 training bound (18 stage convolutions, nothing else): {1 / seconds_per_image:.0f} img/s")
    print(f"the same convolutions at the matmul rate ({training_flops / 1e6:.0f} MFLOP per training image): "
          f"{peak * 1e9 / training_flops:.0f} img/s")


if __name__ == "__main__":
    main()
