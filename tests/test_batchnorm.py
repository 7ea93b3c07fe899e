"""MomentBatchNorm2d: the compiled trainer's BN equals nn.BatchNorm2d; ghost batch norm equals BN per group."""

import copy
import shutil

import pytest
import torch
from torch import nn

from reslab import create_model
from reslab.train.batchnorm import MomentBatchNorm2d, use_ghost_batch_norm, use_moment_batch_norm


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


# Ghost batch norm (Hoffer et al. 2017): statistics per group of images.

def _per_group_reference(reference: nn.BatchNorm2d, x: torch.Tensor, ghost: int) -> torch.Tensor:
    """Each group of ``ghost`` images through its own copy of ``reference``; the copies' running
    statistics averaged into ``reference``, as ghost batch norm's are."""
    copies = [copy.deepcopy(reference) for _ in range(x.shape[0] // ghost)]
    y = torch.cat([layer(part) for layer, part in zip(copies, x.split(ghost))])
    with torch.no_grad():
        for name in ("running_mean", "running_var"):
            getattr(reference, name).copy_(torch.stack([getattr(c, name) for c in copies]).mean(0))
        reference.num_batches_tracked.add_(1)
    return y


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_ghost_batch_norm_normalises_each_group_of_images_by_its_own_statistics(memory_format):
    reference, ghost = _pair()
    assert use_ghost_batch_norm(ghost, 4) == 1 and ghost.ghost_batch == 4
    x = (torch.randn(12, 6, 5, 5) * 2 + 3).to(memory_format=memory_format)
    x[4:8] += 10  # the middle group far from the others: whole-batch statistics would not match
    x_ref, x_ghost = x.clone().requires_grad_(), x.clone().requires_grad_()
    grad = torch.randn(12, 6, 5, 5)
    y_ref = _per_group_reference(reference, x_ref, 4)
    y = ghost(x_ghost)
    assert y.is_contiguous(memory_format=memory_format)
    torch.testing.assert_close(y, y_ref, atol=2e-5, rtol=1e-5)
    (y_ref * grad).sum().backward(), (y * grad).sum().backward()
    torch.testing.assert_close(x_ghost.grad, x_ref.grad, atol=2e-5, rtol=1e-5)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(ghost, name), getattr(reference, name))
    plain = copy.deepcopy(reference)
    plain.load_state_dict(ghost.state_dict())
    ghost.eval(), plain.eval()
    assert torch.equal(ghost(x), plain(x))  # evaluation: the running statistics, not the groups'


def test_ghost_batch_norm_takes_the_whole_batch_when_the_group_size_does_not_divide_it():
    reference, ghost = _pair()
    use_ghost_batch_norm(ghost, 4)
    x = torch.randn(10, 6, 3, 3)
    torch.testing.assert_close(ghost(x), reference(x), atol=2e-5, rtol=1e-5)


def test_use_ghost_batch_norm_turns_every_bn_layer_and_rejects_a_group_below_one():
    model = create_model("resnet20")
    assert use_moment_batch_norm(model) == 19
    assert use_ghost_batch_norm(model, 32) == 19  # layers that were MomentBatchNorm2d already count too
    assert all(m.ghost_batch == 32 for m in model.modules() if isinstance(m, MomentBatchNorm2d))
    with pytest.raises(ValueError, match="at least 1"):
        use_ghost_batch_norm(model, 0)


@pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile's CPU backend needs a C++ compiler")
def test_compiled_ghost_batch_norm_equals_the_eager_layer():
    _, eager = _pair(4)
    use_ghost_batch_norm(eager, 2)
    compiled_layer = copy.deepcopy(eager)
    compiled = torch.compile(compiled_layer)
    x, grad = (torch.randn(6, 4, 3, 3) + 3).to(memory_format=torch.channels_last), torch.randn(6, 4, 3, 3)
    (y_ref, dx_ref), (y, dx) = _step(eager, x, grad), _step(compiled, x, grad)
    torch.testing.assert_close(y, y_ref, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(dx, dx_ref, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(compiled_layer.running_var, eager.running_var)
