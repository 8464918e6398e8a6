"""Learning-rate schedule (linear warmup, then cosine / reduce-on-plateau / constant) and EMA of weights."""

from __future__ import annotations

import copy
import math

import torch


class LRSchedule:
    """Learning rate of optimizer step ``s`` (0-based), in the units of ``lr``.

    warmup:  lr * (s + 1) / warmup_steps for s < warmup_steps
    cosine:  lr * (r + (1 - r) * (1 + cos(pi * p)) / 2), p = (s - warmup) / (total - warmup) in [0, 1],
             r = min_lr_ratio
    plateau: lr * factor**k, k = times ``epoch_end`` saw more than ``patience`` epochs without a new best
    constant: lr
    """

    def __init__(self, lr: float, kind: str = "plateau", warmup_steps: int = 0, total_steps: int = 1,
                 min_lr_ratio: float = 0.0, patience: int = 5, factor: float = 0.5):
        self.base, self.kind, self.warmup = lr, kind, int(warmup_steps)
        self.total, self.min_ratio = max(int(total_steps), 1), min_lr_ratio
        self.patience, self.factor = patience, factor
        self.scale, self.best, self.bad_epochs = 1.0, math.inf, 0

    def lr(self, step: int) -> float:
        mult = 1.0
        if self.kind == "cosine":
            span = max(self.total - self.warmup, 1)
            p = min(max(step - self.warmup, 0) / span, 1.0)
            mult = self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * p))
        elif self.kind == "plateau":
            mult = self.scale
        if step < self.warmup:
            mult *= (step + 1) / self.warmup
        return self.base * mult

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        lr = self.lr(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def epoch_end(self, val: float) -> None:
        """Reduce-on-plateau bookkeeping (only changes the LR for kind='plateau')."""
        if val < self.best:
            self.best, self.bad_epochs = val, 0
        else:
            self.bad_epochs += 1
            if self.kind == "plateau" and self.bad_epochs > self.patience:
                self.scale *= self.factor
                self.bad_epochs = 0

    def state_dict(self) -> dict:
        return {"scale": self.scale, "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.scale, self.best, self.bad_epochs = float(state["scale"]), float(state["best"]), int(state["bad_epochs"])


class EMA:
    """Exponential moving average of a model's parameters: ``ema = decay * ema + (1 - decay) * p``
    after every optimizer step; buffers (reference energies, scale) are copied."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = float(decay)
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for p_ema, p in zip(self.model.parameters(), model.parameters()):
            p_ema.mul_(self.decay).add_(p.detach(), alpha=1 - self.decay)
        for b_ema, b in zip(self.model.buffers(), model.buffers()):
            b_ema.copy_(b)
