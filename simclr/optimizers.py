"""LARS, the parameter groups that keep BatchNorm and biases out of it, and the lr schedule."""

import functools
import math

import torch


class LARS(torch.optim.Optimizer):
    """SGD with momentum whose step for each weight tensor is scaled by its trust ratio.

    As in the SimCLR paper's implementation: g <- g + wd * w; ratio = eta * |w| / |g|;
    v <- momentum * v + lr * ratio * g; w <- w - v. A param group with lars=False takes plain
    momentum SGD steps (ratio 1, no weight decay); param_groups() puts BatchNorm and biases there.
    """

    def __init__(self, params, lr, momentum=0.9, weight_decay=0.0, trust_coefficient=1e-3):
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            trust_coefficient=trust_coefficient,
            lars=True,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for weight in group["params"]:
                if weight.grad is None:
                    continue
                grad = weight.grad
                if group["lars"]:
                    grad = grad.add(weight, alpha=group["weight_decay"])
                    weight_norm, grad_norm = torch.linalg.norm(weight), torch.linalg.norm(grad)
                    # A zero norm (a fresh zero-initialised tensor, a dead gradient) gives ratio 1.
                    ratio = torch.where(
                        (weight_norm > 0) & (grad_norm > 0),
                        group["trust_coefficient"] * weight_norm / grad_norm,
                        torch.ones_like(weight_norm),
                    )
                    grad = grad * ratio
                state = self.state[weight]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(weight)
                velocity = state["momentum_buffer"]
                velocity.mul_(group["momentum"]).add_(grad, alpha=group["lr"])
                weight.sub_(velocity)


def param_groups(model, weight_decay):
    """Two groups: weights (decayed, LARS-adapted) and 1-D tensors, i.e. BatchNorm and biases.

    The paper excludes BatchNorm and bias parameters from weight decay and the LARS adaptation:
    their scale carries no meaning that a trust ratio should keep, and decaying them hurts.
    """
    weights = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    norms_and_biases = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [
        {"params": weights, "weight_decay": weight_decay, "lars": True},
        {"params": norms_and_biases, "weight_decay": 0.0, "lars": False},
    ]


def linearly_scaled(lr, batch_size):
    """An lr quoted per 256 images, for a batch of batch_size (Goyal et al.'s linear rule)."""
    return lr * batch_size / 256


def make_optimizer(model, cfg):
    """The stage-one optimizer named by cfg.optimizer, at lr 0 (the schedule sets it every step)."""
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "lars":
        return LARS(groups, lr=0.0, momentum=cfg.momentum, trust_coefficient=cfg.trust_coefficient)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=0.0, momentum=cfg.momentum)
    return torch.optim.Adam(groups, lr=0.0)


def warmup_cosine(step, total_steps, warmup_steps, peak):
    """lr at a 0-based step: linear warm-up to peak, then cosine decay to 0 at total_steps."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def warmup_steps(warmup_epochs, steps_per_epoch):
    """Warm-up epochs, which may be a fraction, as whole steps."""
    return round(warmup_epochs * steps_per_epoch)


def schedule(peak, epochs, steps_per_epoch, warmup_epochs=0):
    """-> lr_at(0-based global step): warm-up over warmup_epochs (rounded to whole steps), then
    cosine decay to 0 at the end of the last epoch."""
    return functools.partial(
        warmup_cosine,
        total_steps=epochs * steps_per_epoch,
        warmup_steps=warmup_steps(warmup_epochs, steps_per_epoch),
        peak=peak,
    )


def set_lr(optimizer, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr
