"""The official learning-rate schedule (TRAINING.md 1.1): cosine with warmup and a floor factor.

Factor of the base LR at update ``s`` (``LambdaLR``; eta = 0.001, W = warmup, T = total)::

    s < W:   eta + (1 - cos(pi s / W)) (1 - eta) / 2
    s >= W:  eta + (1 + cos(pi (s - W) / (T - W))) (1 - eta) / 2      (= eta at s = T; not clamped)

Stepped once per OPTIMIZER UPDATE here, not per micro-batch as the official code does (it calls
``scheduler.step()`` at the top of every ``training_step``). With accumulation 8 the official
"12,000 warmup / 100,000 T_max" micro-steps are 1,500 / 12,500 updates (the paper's Table A says
"warm-up 1500"): stepping per update with W and T given in updates is the same curve, but it does
not change when the accumulation or the number of GPUs changes, and a resumed run needs only the
update counter. Our stage-2 defaults are therefore W = 1,500 and T = 12,500 updates.
"""

from __future__ import annotations

import math

import torch


def lr_factor(step: int, warmup: int, total: int, eta: float = 0.001) -> float:
    """Multiplier of the base LR at optimizer update ``step`` (0-based), the official formula."""
    s = float(step)
    if warmup > 0 and s < warmup:
        return eta + (1.0 - math.cos(math.pi * s / warmup)) * (1.0 - eta) / 2.0
    span = max(1, total - warmup)
    return eta + (1.0 + math.cos(math.pi * (s - warmup) / span)) * (1.0 - eta) / 2.0


def make_scheduler(optimizer: torch.optim.Optimizer, warmup: int, total: int,
                   eta: float = 0.001) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` with :func:`lr_factor`; call ``.step()`` once per optimizer update."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup, total, eta))
