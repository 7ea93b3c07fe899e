"""The unrolled view of residual networks, checked numerically on linear residual units.

Veit et al. 2016 (sec. 3, eq. 3-5): a stack of n residual units x_{i+1} = x_i + f_i(x_i) is a sum
over 2^n paths, one per subset of units whose branch the path takes. For linear units
f_i(x) = W_i x the expansion is exact: x_n = prod_i (I + W_i) x_0 = sum over subsets S of
(W_{s_k} ... W_{s_1}) x_0. He et al. 2016 ("Identity Mappings", eq. 4-5): the Jacobian
d x_L / d x_l = I + (terms through the branches), so the identity term carries the signal and
the gradient back unchanged however small the branches are, while a plain stack's Jacobian
W_{L-1} ... W_l vanishes with them.
"""

from itertools import combinations

import pytest
import torch
from torch.autograd.functional import jacobian

DIM = 4


def random_weights(n: int, scale: float = 0.3, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(DIM, DIM, generator=generator, dtype=torch.float64) for _ in range(n)]


def residual_stack(weights: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """x_{i+1} = x_i + W_i x_i for each unit in order."""
    for w in weights:
        x = x + w @ x
    return x


def path_product(weights: list[torch.Tensor], subset: tuple[int, ...]) -> torch.Tensor:
    """The linear map of the path through the branches of ``subset`` (and the shortcuts of the
    other units): W_{s_k} ... W_{s_1}, later units on the left; the identity for the empty path."""
    product = torch.eye(DIM, dtype=torch.float64)
    for i in subset:  # subsets are increasing: apply W_i after the earlier units
        product = weights[i] @ product
    return product


def all_paths(n: int) -> list[tuple[int, ...]]:
    return [subset for k in range(n + 1) for subset in combinations(range(n), k)]


@pytest.mark.parametrize("n", [4, 5, 6])
def test_output_is_the_sum_over_all_2_to_the_n_paths(n):
    weights = random_weights(n)
    x = torch.randn(DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    paths = all_paths(n)
    assert len(paths) == 2**n
    unrolled = sum(path_product(weights, subset) @ x for subset in paths)
    assert torch.allclose(residual_stack(weights, x), unrolled, rtol=1e-12, atol=1e-12)
    # A single path is not the network: leaving out any one length changes the sum.
    longest = path_product(weights, tuple(range(n))) @ x
    assert not torch.allclose(residual_stack(weights, x), unrolled - longest)


@pytest.mark.parametrize("n, l", [(4, 0), (5, 2), (6, 1)])
def test_jacobian_is_identity_plus_the_branch_terms(n, l):
    weights = random_weights(n)
    upper = weights[l:]  # the units between x_l and x_L
    x_l = torch.randn(DIM, dtype=torch.float64)
    J = jacobian(lambda x: residual_stack(upper, x), x_l)
    branch_terms = sum(path_product(upper, subset) for subset in all_paths(len(upper)) if subset)
    assert torch.allclose(J, torch.eye(DIM, dtype=torch.float64) + branch_terms, rtol=1e-12, atol=1e-12)


def test_identity_term_survives_tiny_branches_while_a_plain_stack_vanishes():
    n = 6
    weights = random_weights(n, scale=1e-4)
    x = torch.randn(DIM, dtype=torch.float64)
    J_residual = jacobian(lambda v: residual_stack(weights, v), x)
    eye = torch.eye(DIM, dtype=torch.float64)
    # |J - I| <= prod(1 + |W_i|) - 1 (spectral norms), about the sum of the branch norms: tiny.
    bound = torch.prod(torch.stack([1 + torch.linalg.matrix_norm(w, 2) for w in weights])) - 1
    assert torch.linalg.matrix_norm(J_residual - eye, 2) <= bound + 1e-15 and bound < 1e-2

    def plain_stack(v: torch.Tensor) -> torch.Tensor:
        for w in weights:
            v = w @ v
        return v

    J_plain = jacobian(plain_stack, x)
    assert J_plain.abs().max() < 1e-20  # the product of six tiny matrices: the gradient vanishes
    # Backpropagating a gradient g through the residual stack returns it almost unchanged.
    g = torch.randn(DIM, dtype=torch.float64)
    assert torch.linalg.vector_norm(J_residual.T @ g - g) <= bound * torch.linalg.vector_norm(g) + 1e-15
