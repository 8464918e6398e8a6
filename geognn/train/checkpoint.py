"""Resumable training state: ``state.pt`` in the run folder, written atomically.

It holds tensors and plain Python containers only (loads with ``torch.load(weights_only=True)``):
model, optimizer, LR schedule, EMA, position (epoch, batch in the epoch, optimizer step), RNG
states (as tensors), best validation value and the bookkeeping of the current epoch. Written
every ``checkpoint_every`` steps, at the end of every epoch and when SIGINT (Ctrl-C) or SIGTERM
stops training (after the current step); the best model is kept separately as ``model.pt``
(``Model.save``).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from ..model import atomic_torch_save

STATE_FORMAT = 1


def rng_states() -> dict:
    """torch (CPU and CUDA), numpy and Python RNG states as tensors."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": torch.as_tensor(keys.astype(np.int64)),
        "numpy_tail": torch.tensor([pos, has_gauss], dtype=torch.int64),
        "numpy_gauss": torch.tensor([cached], dtype=torch.float64),
        "python": torch.tensor(internal, dtype=torch.int64),
        "python_gauss": torch.tensor([float("nan") if gauss is None else gauss], dtype=torch.float64),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_states(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    pos, has_gauss = state["numpy_tail"].tolist()
    np.random.set_state(
        ("MT19937", state["numpy"].numpy().astype(np.uint32), pos, has_gauss, float(state["numpy_gauss"][0]))
    )
    gauss = float(state["python_gauss"][0])
    random.setstate((3, tuple(state["python"].tolist()), None if gauss != gauss else gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_state(path: str | Path, **state) -> None:
    """Write the training state atomically (temp file + os.replace)."""
    atomic_torch_save({"format": STATE_FORMAT, **state}, path)


def load_state(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"{path}: not a readable training state ({type(exc).__name__}); delete it to "
            "restart the run from its beginning"
        ) from exc
    if not isinstance(state, dict) or "format" not in state:
        raise ValueError(f"{path}: not a geognn training state (no 'format' key)")
    if state["format"] != STATE_FORMAT:
        raise ValueError(
            f"{path}: training state format {state['format']!r}, this geognn resumes format "
            f"{STATE_FORMAT} (written by another geognn version): start a new run (the run's "
            "model.pt may still load with geognn predict)"
        )
    return state
