"""LARS leaves BatchNorm and biases alone; the lr schedule and its scaling rules."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

import config
from simclr import optimizers


def small_model():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))


def test_param_groups_put_every_batchnorm_and_bias_tensor_in_the_plain_group():
    model = small_model()
    weights, plain = optimizers.param_groups(model, weight_decay=0.1)
    assert weights["lars"] and weights["weight_decay"] == 0.1
    assert not plain["lars"] and plain["weight_decay"] == 0.0
    plain_ids = {id(p) for p in plain["params"]}
    expected = [model[0].bias, model[1].weight, model[1].bias, model[3].bias]
    assert plain_ids == {id(p) for p in expected}
    assert {id(p) for p in weights["params"]} == {id(model[0].weight), id(model[3].weight)}


def test_lars_adapts_and_decays_weights_but_steps_batchnorm_and_biases_plainly():
    """In float64 with a tolerance of 1e-12, far below the effects it guards: the weight decay
    moves each weight by more than 1e-6 and a 1% error in the trust ratio by more than 1e-8."""
    torch.manual_seed(0)
    model = small_model().double()
    lr, weight_decay, eta, tolerance = 0.5, 0.01, 1e-3, 1e-12
    optimizer = optimizers.LARS(
        optimizers.param_groups(model, weight_decay), lr=lr, momentum=0.9, trust_coefficient=eta
    )
    for p in model.parameters():
        p.data = torch.randn_like(p)  # weights of norm ~1 and gradients ~0.01: decay matters
        p.grad = 0.01 * torch.randn_like(p)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    optimizer.step()
    for name, p in model.named_parameters():
        w, g = before[name], grads[name]
        if p.ndim > 1:  # first step: velocity = lr * ratio * (g + wd * w)
            decayed = g + weight_decay * w
            ratio = eta * w.norm() / decayed.norm()
            expected = w - lr * ratio * decayed
            without_decay = w - lr * (eta * w.norm() / g.norm()) * g
            assert (expected - without_decay).abs().max() > 1e-6
            assert (lr * 0.01 * ratio * decayed).abs().max() > 1e-8
        else:
            expected = w - lr * g
        torch.testing.assert_close(p.detach(), expected, atol=tolerance, rtol=0, msg=name)


def test_lars_momentum_accumulates_across_steps():
    weight = nn.Parameter(torch.tensor([1.0, -2.0]))
    optimizer = optimizers.LARS(
        [{"params": [weight], "lars": False, "weight_decay": 0.0}], lr=0.1, momentum=0.9
    )
    for _ in range(2):
        weight.grad = torch.tensor([1.0, 1.0])
        optimizer.step()
    # velocity after two steps: 0.1, then 0.9 * 0.1 + 0.1 = 0.19; total moved 0.29
    torch.testing.assert_close(weight.detach(), torch.tensor([1.0 - 0.29, -2.0 - 0.29]))


def test_warmup_then_cosine_to_zero():
    lrs = [optimizers.warmup_cosine(step, 100, 10, 2.0) for step in range(100)]
    assert lrs[0] == pytest.approx(0.2)
    assert lrs[9] == pytest.approx(2.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert optimizers.warmup_cosine(100, 100, 10, 2.0) == pytest.approx(0.0, abs=1e-12)
    assert lrs[55] == pytest.approx(1.0, rel=0.05)  # halfway through the decay


@pytest.mark.parametrize(
    "optimizer, lr, scaling, batch, expected",
    [
        ("lars", None, "linear", 512, 2.0),
        ("lars", None, "sqrt", 512, 0.075 * math.sqrt(512)),
        ("lars", 0.1, "sqrt", 256, 1.6),
        ("lars", 0.5, "linear", 128, 0.25),
        ("sgd", 0.3, "none", 1024, 0.3),
        ("adam", None, "linear", 512, 1e-3),
    ],
)
def test_peak_lr_scaling_rules(optimizer, lr, scaling, batch, expected):
    cfg = SimpleNamespace(optimizer=optimizer, lr=lr, lr_scaling=scaling, batch_size=batch)
    assert config.peak_lr(cfg) == pytest.approx(expected)


@pytest.mark.parametrize(
    "epochs, given, expected",
    [(1000, None, 10), (100, None, 10), (20, None, 2), (5, None, 0.5), (5, 3, 3), (5, 0, 0)],
)
def test_warmup_is_10_epochs_but_at_most_a_tenth_of_the_run_unless_given(epochs, given, expected):
    cfg = config.Pretrain(epochs=epochs, warmup_epochs=given)
    assert config.warmup_epochs(cfg) == pytest.approx(expected)


def test_a_short_run_reaches_its_peak_lr_and_decays_to_zero():
    """5 epochs of 19 steps: warm-up over 0.5 epochs (10 steps), then the whole cosine."""
    cfg = config.Pretrain(epochs=5, batch_size=256)
    lr_at = optimizers.schedule(config.peak_lr(cfg), cfg.epochs, 19, config.warmup_epochs(cfg))
    lrs = [lr_at(step) for step in range(5 * 19)]
    assert lrs[9] == pytest.approx(1.0) and lrs[8] < 1.0  # the peak after 10 warm-up steps
    assert max(lrs) == pytest.approx(1.0) and lrs[-1] < 0.01
    assert all(later <= earlier for earlier, later in zip(lrs[10:], lrs[11:]))


def test_lars_on_plain_parameters_adapts_with_its_documented_defaults():
    """No param groups: momentum 0.9, no weight decay, trust coefficient 1e-3, LARS on. The
    gradient is not parallel to the weight, so a weight decay would turn the step."""
    start = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    grad = torch.tensor([[0.8, -0.6]], dtype=torch.float64)
    weight = nn.Parameter(start.clone())
    optimizer = optimizers.LARS([weight], lr=0.5)
    for _ in range(2):
        weight.grad = grad.clone()
        optimizer.step()
    first = 0.5 * (1e-3 * 5 / 1) * grad  # ratio eta * |w| / |g|
    after_first = start - first
    second = 0.9 * first + 0.5 * (1e-3 * after_first.norm() / 1) * grad
    torch.testing.assert_close(weight.detach(), after_first - second, atol=1e-12, rtol=0)


@pytest.mark.parametrize("name, kind", [("lars", optimizers.LARS), ("sgd", torch.optim.SGD)])
def test_make_optimizer_builds_the_named_one_with_the_configs_settings(name, kind):
    cfg = config.Pretrain(optimizer=name, momentum=0.8, weight_decay=0.01, trust_coefficient=0.002)
    optimizer = optimizers.make_optimizer(small_model(), cfg)
    assert type(optimizer) is kind
    weights, plain = optimizer.param_groups
    assert (weights["weight_decay"], plain["weight_decay"]) == (0.01, 0.0)
    assert weights["momentum"] == plain["momentum"] == 0.8
    assert weights["lr"] == plain["lr"] == 0.0  # the schedule sets it every step
    if name == "lars":
        assert weights["lars"] and not plain["lars"] and weights["trust_coefficient"] == 0.002
    optimizers.set_lr(optimizer, 0.3)
    assert [group["lr"] for group in optimizer.param_groups] == [0.3, 0.3]


def test_make_optimizer_adam():
    optimizer = optimizers.make_optimizer(small_model(), config.Pretrain(optimizer="adam"))
    assert type(optimizer) is torch.optim.Adam and len(optimizer.param_groups) == 2
    assert [group["lr"] for group in optimizer.param_groups] == [0.0, 0.0]


def test_a_schedule_without_warm_up_starts_at_its_peak_and_decays_over_all_steps():
    lr_at = optimizers.schedule(2.0, epochs=2, steps_per_epoch=5)
    assert lr_at(0) == pytest.approx(2.0)
    assert lr_at(5) == pytest.approx(1.0)  # halfway through 10 steps: cos(pi / 2)
    assert lr_at(9) == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 0.9)))
