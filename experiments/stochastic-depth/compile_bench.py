"""Training speed of ResNet-56 with per-batch stochastic depth (p_L = 0.5), eager against
torch.compile as the trainer applied it before (whole model, moment BN, dynamic=False).

    python experiments/stochastic-depth/compile_bench.py eager
    python experiments/stochastic-depth/compile_bench.py compile

One thread, batch 128 of 24x24 inputs (the recipe's small-crop phase), bf16 autocast, SGD:
15 steps of warm-up (compiling), then 30 timed steps.
"""

import logging
import sys
import time
import warnings

import torch
import torch._logging

import reslab
from reslab.train.batchnorm import use_moment_batch_norm

warnings.filterwarnings("ignore")
torch._logging.set_logs(dynamo=logging.ERROR)  # the graph-break and recompile warnings
torch.set_num_threads(1)
mode = sys.argv[1]
torch.manual_seed(0)
model = reslab.create_model("resnet56", stochastic_depth=0.5).to(memory_format=torch.channels_last).train()
if mode == "compile":
    use_moment_batch_norm(model)
    model = torch.compile(model, dynamic=False)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
x = torch.randn(128, 3, 24, 24).to(memory_format=torch.channels_last)
y = torch.randint(0, 10, (128,))


def step() -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = torch.nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


start = time.perf_counter()
for _ in range(15):
    step()
warm = time.perf_counter() - start
start = time.perf_counter()
for _ in range(30):
    step()
print(f"{mode}: warm-up 15 steps {warm:.1f} s, then {128 * 30 / (time.perf_counter() - start):.0f} img/s", flush=True)
