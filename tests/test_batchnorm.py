"""MomentBatchNorm2d: the compiled trainer's BN equals nn.BatchNorm2d."""

import copy
import shutil

import pytest
import torch
from torch import nn

from reslab import create_model
from reslab.train.batchnorm import MomentBatchNorm2d, use_moment_batch_norm


def _pair(channels: int = 6) -> tuple[nn.BatchNorm2d, nn.BatchNorm2d]:
    torch.manual_seed(0)
    reference = nn.BatchNorm2d(channels)
    nn.init.uniform_(reference.weight, 0.5, 1.5)
    nn.init.normal_(reference.bias)
    moment = copy.deepcopy(reference)
    assert use_moment_batch_norm(moment) == 1 and type(moment) is MomentBatchNorm2d
    return reference, moment


def _step(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_()
    y = layer(x)
    (y * grad).sum().backward()
    return y.detach(), x.grad


@pytest.mark.parametrize("offset", [0.0, 50.0])
def test_moment_batch_norm_equals_batch_norm_in_outputs_gradients_and_running_statistics(offset):
    """A channel mean 25 standard deviations from 0 is where E[x^2] - E[x]^2 without the shift
    loses most of its digits; the shifted moments stay at rounding error."""
    reference, moment = _pair()
    for _ in range(3):
        x, grad = torch.randn(8, 6, 5, 5) * 2 + offset, torch.randn(8, 6, 5, 5)
        (y_ref, dx_ref), (y, dx) = _step(reference, x, grad), _step(moment, x, grad)
        torch.testing.assert_close(y, y_ref, atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(dx, dx_ref, atol=2e-5, rtol=1e-5)
        for name in ("weight", "bias"):
            torch.testing.assert_close(getattr(moment, name).grad, getattr(reference, name).grad, atol=1e-3, rtol=1e-5)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(moment, name), getattr(reference, name))
        reference.zero_grad(), moment.zero_grad()
    reference.load_state_dict(moment.state_dict())  # evaluation is PyTorch's own kernel, bit for bit
    reference.eval(), moment.eval()
    x = torch.randn(4, 6, 5, 5) + offset
    assert torch.equal(moment(x), reference(x))


def test_moment_batch_norm_keeps_the_dtype_of_a_bf16_input_and_the_one_value_error():
    _, moment = _pair(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = moment(torch.randn(4, 3, 4, 4).bfloat16())
    assert y.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        moment(torch.randn(1, 3, 1, 1))


def test_use_moment_batch_norm_turns_plain_bn_layers_only_and_keeps_the_state_dict():
    model = create_model("resnet20")
    state = copy.deepcopy(model.state_dict())
    assert use_moment_batch_norm(model) == 19  # stem + 2 per block x 9 blocks
    assert all(type(m) is not nn.BatchNorm2d for m in model.modules())
    assert list(model.state_dict()) == list(state)
    create_model("resnet20").load_state_dict(model.state_dict())
    sync = nn.Sequential(nn.SyncBatchNorm(4), nn.BatchNorm1d(4))
    assert use_moment_batch_norm(sync) == 0 and type(sync[0]) is nn.SyncBatchNorm


@pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile's CPU backend needs a C++ compiler")
def test_compiled_moment_batch_norm_equals_eager_batch_norm_and_updates_its_buffers():
    reference, moment = _pair(4)
    compiled = torch.compile(moment)
    for _ in range(2):
        x, grad = torch.randn(6, 4, 3, 3) + 3, torch.randn(6, 4, 3, 3)
        (y_ref, dx_ref), (y, dx) = _step(reference, x, grad), _step(compiled, x, grad)
        torch.testing.assert_close(y, y_ref, atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(dx, dx_ref, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(moment.running_mean, reference.running_mean)
    torch.testing.assert_close(moment.running_var, reference.running_var)
    assert moment.num_batches_tracked.item() == 2
