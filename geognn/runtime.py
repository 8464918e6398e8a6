"""Process-level settings for running models: the C allocator, and ``torch.compile`` of a backbone.

``tune_allocator()`` stops glibc's ``malloc`` from handing large blocks back to the kernel after
every call. By default glibc serves each allocation above a (dynamic, at most 32 MiB) threshold
with its own ``mmap`` and ``munmap`` s it on ``free``, and trims the top of the heap when more than
twice that is free. A model call allocates and frees the same large tensors every time, so every
call faults all their pages in again (a minor page fault per 4 KiB page, zero-filled by the
kernel). With ``SETTINGS`` (no per-block mmap, no trimming) the heap keeps its pages between calls.

Measured (``benchmarks/bench_pagefaults.py``, results/bench_pagefaults.json: forward + forces,
float32, 1 thread, the QM9 batch of 32 molecules and the OC20 batch of 8 periodic systems, each
backbone at its defaults (nequip and ponita at SMALL_SETTINGS on OC20); 2-core Xeon VM shared with
other jobs, load average 3-8): minor faults per call from 1,553-52,713 (QM9) and 6,681-475,720
(OC20) to 0-398; wall time tuned / default 0.51-1.14, median 0.88 over 17 backbone-dataset pairs
(painn on OC20 0.51, egnn 0.67-0.69, faenet 0.52-0.84, dimenetpp on QM9 0.71; mace on OC20 1.14,
but 0.87 in a second run, and nequip 0.97-1.08: the noise of the loaded machine;
results/bench_pagefaults_threshold.json). The cost is memory: the process keeps its heap at its
high-water mark, and torch's 64-byte-aligned blocks fragment it, so the resident memory after a
call is larger than glibc's default leaves (+2-21 % for most pairs; mace on OC20 +33-59 %, painn on
OC20 3-4x: 484-609 -> 1,778-1,839 MiB). Raising only the mmap threshold to glibc's maximum (32 MiB)
uses less memory (painn on OC20: 812 MiB) but keeps most of the faults where tensors exceed 32 MiB
(painn on OC20: 385,154 a call, time ratio 0.87 against 0.55 tuned; egnn, mace and dimenetpp on
OC20: 0.69-0.78, as tuned).

The setting is per process and cannot be undone; ``geognn train`` and ``geognn predict`` apply
it, unless the environment variable ``GEOGNN_TUNE_ALLOCATOR=0`` is set; ``GeoGNNCalculator`` only
with ``tune_allocator=True`` (it runs inside the user's own process, whose memory it would change).
On a C library other than glibc (macOS, Windows, musl) it does nothing and returns False, without a
warning. ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (transparent huge pages for malloc, read at
process start) was measured as well: faults drop 17 to over 1,000 fold (2 MiB pages), but time
is not better on the whole (ratio 0.49-1.75).

``CompiledBackbone`` is what ``Model.compile`` holds: the compiled call with its eager fallback.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys

#: Environment variable: "0" (or "false", "no", "off") disables ``tune_allocator``.
ENV_VAR = "GEOGNN_TUNE_ALLOCATOR"

# mallopt parameter numbers, from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4

#: Settings applied by ``tune_allocator`` (bytes, except ``mmap_max``, a count).
#: mmap_max 0: no block gets its own mmap, so every tensor comes from the heap, whose pages stay
#: mapped (glibc caps M_MMAP_THRESHOLD at 32 MiB, so raising the threshold alone would still
#: mmap every larger tensor); trim_threshold 2 GiB (mallopt takes a C int): the heap is trimmed
#: only when 2 GiB at its top are free; top_pad 64 MiB:
#: the heap grows in steps of at least 64 MiB (fewer brk calls).
SETTINGS = {
    "mmap_max": 0,
    "trim_threshold": 2**31 - 1,
    "top_pad": 64 << 20,
}

_applied: dict | None = None


def _glibc():
    """glibc as a ctypes library, or None where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        version = libc.gnu_get_libc_version  # glibc only (musl has no such function)
        version.restype = ctypes.c_char_p
        version()
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
        return libc
    except (OSError, AttributeError):
        return None


def glibc_version() -> str | None:
    """The running glibc's version ("2.36"), or None where the C library is not glibc."""
    libc = _glibc()
    return None if libc is None else libc.gnu_get_libc_version().decode()


def tuning_disabled() -> bool:
    """True when ``GEOGNN_TUNE_ALLOCATOR`` is set to 0, false, no or off."""
    return os.environ.get(ENV_VAR, "").strip().lower() in ("0", "false", "no", "off")


def tune_allocator(settings: dict | None = None, force: bool = False) -> bool:
    """Keep freed memory in the process: glibc ``mallopt`` with ``SETTINGS`` (see the module docstring).

    Call it once, early, in a process that runs models (later calls do nothing). Returns True when
    the settings are in force, False when it did nothing: the C library is not glibc, or
    ``GEOGNN_TUNE_ALLOCATOR=0`` is set (``force=True`` ignores the variable). Never warns.
    ``settings``: other values for the keys of ``SETTINGS`` (plus ``mmap_threshold``, bytes, at
    most 32 MiB), for measurements; None: ``SETTINGS``.

    The cost: the process's resident memory stays at its high-water mark instead of shrinking
    between calls, and can exceed glibc's default by a few times the largest tensor (fragmentation
    of aligned blocks; measured up to 3.8x after a call, see the module docstring).
    """
    global _applied
    if _applied is not None:
        return True
    if tuning_disabled() and not force:
        return False
    libc = _glibc()
    if libc is None:
        return False
    chosen = dict(SETTINGS if settings is None else settings)
    numbers = {
        "trim_threshold": M_TRIM_THRESHOLD,
        "top_pad": M_TOP_PAD,
        "mmap_max": M_MMAP_MAX,
        "mmap_threshold": M_MMAP_THRESHOLD,
    }
    unknown = sorted(set(chosen) - set(numbers))
    if unknown:
        raise ValueError(f"tune_allocator: unknown settings {unknown}; choose from {sorted(numbers)}")
    if not all(libc.mallopt(numbers[key], int(value)) for key, value in chosen.items()):
        return False  # glibc refused a value (mmap_threshold above 32 MiB)
    _applied = chosen
    return True


def allocator_state() -> dict:
    """What ``tune_allocator`` did in this process: glibc version, whether it is applied, settings."""
    return {
        "glibc": glibc_version(),
        "tuned": _applied is not None,
        "settings": dict(_applied) if _applied else None,
        "disabled_by_env": tuning_disabled(),
    }


# ----------------------------------------------------------------------------- torch.compile
def _call_module(module, batch):
    return module(batch)


#: The reason a compiled backbone is not used where a second derivative is needed.
DOUBLE_BACKWARD_REASON = (
    "torch.compile (AOTAutograd) cannot differentiate a compiled region twice, and a training step "
    "with forces or stress in the loss needs that (create_graph=True); those steps run the backbone "
    "eagerly. Prediction, validation and energy-only training run compiled"
)


class CompiledBackbone:
    """``torch.compile`` of a backbone call ``backbone(batch)``, with an eager fallback.

    The backbone is an argument of the compiled function (not captured), so a copy of the model
    (``copy.deepcopy``, an EMA) is never run through the original's weights: a deep copy gets a
    fresh, empty compile cache.

    Args:
        name: what warnings call the backbone (its name in ``geognn.BACKBONES``).
        options: keyword arguments of ``torch.compile`` (``dynamic``, ``backend``, ``mode``, ...).

    ``__call__(backbone, batch, double_backward)``: the compiled call, or the eager one when
    ``double_backward`` (see ``DOUBLE_BACKWARD_REASON``, warned once), inside ``suspended()`` or
    after ``disable``. ``Model.forward`` tells a compile failure from bad input by running the
    failed call again eagerly: if that raises, the input was at fault and its error is raised
    (compiling stays on); if it works, compiling failed, and ``disable`` warns once.
    """

    def __init__(self, name: str, options: dict):
        import torch

        self.name = name
        self.options = dict(options)
        self.fn = torch.compile(_call_module, **self.options)
        self.failure: str | None = None  # why compiled calls stopped (None: they run)
        self._warned_double = False
        self._suspended = False

    @property
    def active(self) -> bool:
        return self.failure is None

    @contextlib.contextmanager
    def suspended(self):
        """Eager calls inside this block."""
        self._suspended = True
        try:
            yield
        finally:
            self._suspended = False

    def __call__(self, backbone, batch, double_backward: bool = False):
        if not self.active or self._suspended:
            return backbone(batch)
        if double_backward:
            if not self._warned_double:
                import warnings

                warnings.warn(f"compiled {self.name} backbone: {DOUBLE_BACKWARD_REASON}", stacklevel=4)
                self._warned_double = True
            return backbone(batch)
        return self.fn(backbone, batch)

    def disable(self, exc: BaseException) -> None:
        """Run eagerly from now on, warning once with the first line of ``exc``."""
        import warnings

        root = getattr(exc, "inner_exception", None) or exc  # a backend's failure: its own exception
        lines = [line.strip() for line in str(root).splitlines() if line.strip()]
        text = " ".join(lines[0].split())[:300] if lines else ""
        self.failure = f"{type(root).__name__}: {text}" if text else type(root).__name__
        warnings.warn(
            f"torch.compile could not compile the {self.name} backbone ({self.failure}); "
            "it runs eagerly (same results, no speed-up)",
            RuntimeWarning,
            stacklevel=4,
        )

    def __deepcopy__(self, memo):
        return CompiledBackbone(self.name, self.options)

    def __repr__(self) -> str:
        state = "active" if self.active else f"fell back to eager: {self.failure}"
        return f"CompiledBackbone({self.name!r}, {self.options}, {state})"
