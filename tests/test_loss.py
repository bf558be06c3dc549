"""NT-Xent against a plain double-loop reference, its gradients, and its known values."""

import math

import pytest
import torch
import torch.nn.functional as F

import net


def reference_nt_xent(z1, z2, temperature):
    """The paper's loss written out anchor by anchor, in float64."""
    z = F.normalize(torch.cat([z1, z2]).double(), dim=1)
    n = len(z1)
    total = 0.0
    for i in range(2 * n):
        positive = i + n if i < n else i - n
        numerator = torch.exp(z[i] @ z[positive] / temperature)
        denominator = sum(torch.exp(z[i] @ z[k] / temperature) for k in range(2 * n) if k != i)
        total = total - torch.log(numerator / denominator)
    return total / (2 * n)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13])
@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_loss_and_gradients_equal_the_double_loop_reference(n, temperature):
    generator = torch.Generator().manual_seed(n)
    z1 = torch.randn(n, 7, generator=generator, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(n, 7, generator=generator, dtype=torch.float64, requires_grad=True)
    loss = net.nt_xent(z1, z2, temperature)
    expected = reference_nt_xent(z1, z2, temperature)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)
    grads = torch.autograd.grad(loss, (z1, z2))
    expected_grads = torch.autograd.grad(expected, (z1, z2))
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad.double(), expected_grad, rtol=1e-4, atol=1e-6)


def test_random_high_dimensional_embeddings_give_chance_level():
    n = 64
    generator = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(2, n, 8192, generator=generator)
    assert net.nt_xent(z1, z2, 0.5).item() == pytest.approx(math.log(2 * n - 1), rel=0.01)


def test_identical_views_of_distinct_images_give_a_loss_near_zero():
    z = torch.eye(6)  # six mutually orthogonal images, both views identical
    assert net.nt_xent(z, z.clone(), 0.05).item() < 1e-3


def test_self_similarity_is_masked_with_minus_infinity_and_targets_are_the_other_view():
    z1, z2 = torch.randn(2, 4, 5)
    logits, targets = net.contrastive_logits(z1, z2, 0.5)
    assert logits.shape == (8, 8)
    assert torch.isneginf(logits.diagonal()).all()
    assert torch.isfinite(logits[~torch.eye(8, dtype=torch.bool)]).all()
    assert targets.tolist() == [4, 5, 6, 7, 0, 1, 2, 3]


def test_the_loss_is_float32_under_half_precision_autocast_and_equals_fp32():
    z1, z2 = torch.randn(2, 16, 32)
    expected = net.nt_xent(z1, z2, 0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, _ = net.contrastive_logits(z1.bfloat16(), z2.bfloat16(), 0.1)
        loss = net.nt_xent(z1.bfloat16(), z2.bfloat16(), 0.1)
    assert logits.dtype == torch.float32
    assert loss.item() == pytest.approx(expected.item(), rel=0.02)
    assert torch.isfinite(net.nt_xent(z1.half(), z2.half(), 0.05))
