"""Patch-whitening initialisation of the stem (reslab.train.whitening, airbench's first layer)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reslab.registry import create_model
from reslab.train.whitening import first_conv, patch_covariance, patch_whitening_filters, whiten_stem_

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)


def correlated_images(n: int = 64, size: int = 12, channels: int = 3) -> torch.Tensor:
    """uint8 [n, size, size, channels] with strongly correlated neighbouring pixels and channels."""
    g = torch.Generator().manual_seed(0)
    base = F.avg_pool2d(torch.rand(n, 1, size + 2, size + 2, generator=g), 3, stride=1)
    noise = 0.1 * torch.rand(n, channels, size, size, generator=g)
    return ((0.8 * base + noise).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def normalised(images: torch.Tensor, channels: int = 3) -> torch.Tensor:
    mean, std = torch.tensor(MEAN[:channels]).view(1, -1, 1, 1), torch.tensor(STD[:channels]).view(1, -1, 1, 1)
    return (images.permute(0, 3, 1, 2).float() / 255 - mean) / std


def test_patch_covariance_matches_torch_cov_of_the_unfolded_patches():
    images = correlated_images()
    patches = F.unfold(normalised(images).double(), 3).transpose(1, 2).reshape(-1, 27)
    expected = torch.cov(patches.T, correction=0)
    assert torch.allclose(patch_covariance(images, MEAN, STD, (3, 3), chunk=10), expected, atol=1e-6)


def test_the_filters_whiten_the_top_components_and_come_in_opposite_pairs():
    covariance = patch_covariance(correlated_images(), MEAN, STD, (3, 3))
    filters = patch_whitening_filters(covariance, 8, eps=0.0)
    assert filters.shape == (16, 27)
    assert torch.equal(filters[8:], -filters[:8])
    assert torch.allclose(filters[:8] @ covariance @ filters[:8].T, torch.eye(8, dtype=torch.float64), atol=1e-6)
    eigenvalues = torch.linalg.eigvalsh(covariance)
    assert eigenvalues[-1] > 10 * eigenvalues[-8]  # the images really are correlated...
    assert filters.norm(dim=1)[0] < filters.norm(dim=1)[7] / 3  # ...so the largest component, first, gets the smallest gain


def test_whitening_resnet20s_stem_decorrelates_its_outputs_on_the_images():
    images = correlated_images()
    model = create_model("resnet20")
    assert whiten_stem_(model, images, MEAN, STD, eps=0.0) == 16
    outputs = F.conv2d(normalised(images), model.conv1.weight).permute(1, 0, 2, 3).reshape(16, -1)
    covariance = torch.cov(outputs[:8], correction=0)
    assert torch.allclose(covariance, torch.eye(8), atol=1e-3)
    assert torch.equal(model.conv1.weight[8:], -model.conv1.weight[:8])


def test_a_stem_wider_than_two_patch_dimensions_keeps_its_extra_channels():
    model = nn.Sequential(nn.Conv2d(1, 21, 3, bias=True), nn.ReLU())
    before = model[0].weight.detach().clone()
    model[0].bias.data.fill_(1.0)
    assert whiten_stem_(model, correlated_images(channels=1), MEAN[:1], STD[:1]) == 18  # 9 dimensions, +/-
    assert torch.equal(model[0].weight[18:], before[18:])
    assert not torch.equal(model[0].weight[:18], before[:18])
    assert torch.equal(model[0].bias, torch.zeros(21))


@pytest.mark.parametrize("model, match", [
    (nn.Sequential(nn.Conv2d(3, 6, 3, groups=3)), "ungrouped"),
    (nn.Sequential(nn.Conv2d(4, 8, 3)), "does not see the 3-channel images"),
    (nn.Sequential(nn.Linear(3, 3)), "no nn.Conv2d"),
])
def test_a_stem_that_cannot_be_whitened_is_refused(model, match):
    with pytest.raises(ValueError, match=match):
        whiten_stem_(model, correlated_images(), MEAN, STD)


def test_the_first_conv_is_the_stem_of_the_zoos_families():
    for name in ("resnet20", "resnet18", "preact_resnet110", "wrn16_4"):
        model = create_model(name)
        assert first_conv(model) is model.conv1
