"""Learning-rate schedule (linear warmup, then cosine / reduce-on-plateau / constant) and EMA of weights."""

from __future__ import annotations

import copy
import math

import torch

#: Warmup when the config leaves it unset: this many steps, at most a twentieth of the epoch budget.
AUTO_WARMUP_STEPS = 100


def auto_warmup(warmup_steps: int | None, total_steps: int) -> int:
    """The warmup of a run: ``warmup_steps`` when given, else min(AUTO_WARMUP_STEPS, total_steps // 20)."""
    if warmup_steps is not None:
        return int(warmup_steps)
    return min(AUTO_WARMUP_STEPS, int(total_steps) // 20)


class LRSchedule:
    """Learning rate of optimizer step ``s`` (0-based), in the units of ``lr``.

    ``warmup_steps`` None: ``auto_warmup(None, total_steps)``; ``time_budget`` 0: anneal over the steps.

    warmup:  lr * (s + 1) / warmup_steps for s < warmup_steps (times the kind's factor below)
    cosine:  lr * (r + (1 - r) * (1 + cos(pi * p)) / 2), r = min_lr_ratio, p in [0, 1] the progress
             through the budget:
               epoch budget (time_budget = 0): p = (s - warmup) / (total_steps - warmup)
               time budget (time_budget = T s): p = max(t / T, (s - warmup) / (total_steps - warmup)),
               t = training seconds elapsed before step s (the clock of the time limit; the epoch term
               makes the anneal end with the epochs when they run out first)
    plateau: lr * factor**k, k = times ``epoch_end`` saw more than ``patience`` epochs without a new best
    constant: lr

    ``state_dict`` holds the plateau bookkeeping and the last progress ``p`` and elapsed time ``t``
    (the run's state.pt also stores the elapsed training time the time budget resumes from).
    """

    def __init__(
        self,
        lr: float,
        kind: str = "plateau",
        warmup_steps: int | None = 0,
        total_steps: int = 1,
        min_lr_ratio: float = 0.0,
        patience: int = 5,
        factor: float = 0.5,
        time_budget: float = 0.0,
    ):
        self.base, self.kind, self.warmup = lr, kind, auto_warmup(warmup_steps, total_steps)
        self.total, self.min_ratio = max(int(total_steps), 1), min_lr_ratio
        self.patience, self.factor = patience, factor
        self.time_budget = float(time_budget or 0.0)
        self.scale, self.best, self.bad_epochs = 1.0, math.inf, 0
        self.progress, self.elapsed = 0.0, 0.0

    def describe(self) -> str:
        """The schedule in words, e.g. "lr 0.001 cosine-annealed to 1e-05 over 150 s, warmup 100 steps"."""
        warm = f", warmup {self.warmup} steps" if self.warmup else ""
        if self.kind == "cosine":
            budget = f"{self.time_budget:g} s" if self.time_budget > 0 else f"{self.total} steps"
            return f"lr {self.base:g} cosine-annealed to {self.base * self.min_ratio:g} over {budget}{warm}"
        if self.kind == "plateau":
            return f"lr {self.base:g}, x{self.factor:g} after {self.patience} epochs without improvement{warm}"
        return f"lr {self.base:g} constant{warm}"

    def budget_progress(self, step: int, elapsed: float | None = None) -> float:
        """Progress p in [0, 1] of the anneal at ``step`` after ``elapsed`` seconds (see the class docstring)."""
        span = max(self.total - self.warmup, 1)
        p = max(step - self.warmup, 0) / span
        if self.time_budget > 0:
            if elapsed is None:
                raise ValueError("a time-budget schedule needs the elapsed training time")
            p = max(p, elapsed / self.time_budget)
        return min(max(p, 0.0), 1.0)

    def lr(self, step: int, elapsed: float | None = None) -> float:
        mult = 1.0
        if self.kind == "cosine":
            p = self.budget_progress(step, elapsed)
            mult = self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * p))
        elif self.kind == "plateau":
            mult = self.scale
        if step < self.warmup:
            mult *= (step + 1) / self.warmup
        return self.base * mult

    def apply(self, optimizer: torch.optim.Optimizer, step: int, elapsed: float | None = None) -> float:
        """Set the learning rate of ``step`` (``elapsed``: training seconds so far, for a time budget)."""
        lr = self.lr(step, elapsed)
        if self.kind == "cosine":
            self.progress = self.budget_progress(step, elapsed)
        self.elapsed = float(elapsed or 0.0)
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
        return {
            "scale": self.scale,
            "best": self.best,
            "bad_epochs": self.bad_epochs,
            "progress": self.progress,
            "elapsed": self.elapsed,
        }

    def load_state_dict(self, state: dict) -> None:
        self.scale, self.best, self.bad_epochs = float(state["scale"]), float(state["best"]), int(state["bad_epochs"])
        self.progress = float(state.get("progress", 0.0))  # absent in state.pt of older runs
        self.elapsed = float(state.get("elapsed", 0.0))


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
