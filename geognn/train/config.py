"""Training configuration: one dataclass, filled from defaults < YAML/JSON file < command line.

Every run writes the resolved configuration to ``<out>/config.json`` (JSON is valid YAML, so
``geognn train --config runs/x/config.json`` repeats a run). Unknown keys and bad values raise
``ValueError`` naming the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The QM9 subset shipped with the package (see data/qm9/README.md for its origin and licence).
DEFAULT_QM9 = Path(__file__).resolve().parents[2] / "data" / "qm9" / "qm9pack_subset_stride26.csv"


#: The default job's SchNet: smaller than SchNet's defaults so it learns within minutes on 2 cores.
DEMO_BACKBONE_KWARGS = {"hidden_channels": 64, "num_filters": 64, "num_layers": 3, "num_gaussians": 32}

DATASETS = ("qm9", "oc20-is2re", "oc20-s2ef", "cif-folder", "extxyz", "ase-db")
CHOICES = {
    "dataset": DATASETS,
    "on_error": ("raise", "skip"),
    "loss": ("mse", "mae"),
    "energy_normalisation": ("per_atom", "per_structure"),
    "scheduler": ("plateau", "cosine", "constant"),
    "split": ("random", "qm9-standard"),
}


@dataclass
class TrainConfig:
    """Everything a run needs. Energies in eV, lengths in Å, time in seconds, steps = optimizer steps.

    The model learns one or more scalar labels (``target``), each a ``geognn.targets.Target``
    (name, unit, readout): per-atom contributions plus per-element reference values, summed
    (extensive, readout "sum") or averaged (intensive, "mean") over the structure. With
    ``forces_weight``/``stress_weight`` > 0 also forces (-dE/dpos) and stress from the extensive
    energy target. ``ensemble`` > 1 trains that many models (seeds seed, seed+1, ...) on the
    same split into one checkpoint.
    """

    # --- data
    dataset: str = "qm9"  # one of DATASETS (geognn.datasets.open_dataset kinds)
    data_root: str | None = None  # None: the shipped QM9 subset (qm9 only)
    # label(s) to learn; None: U0 for qm9, else the data's labels (a CGCNN header's columns, "energy")
    target: str | list[str] | None = None
    # unit of each label in the data files (one for all, or one per target): energies are converted
    # to eV, energies per atom to eV/atom; None: eV (qm9, oc20: the dataset's own units)
    unit: str | list[str] | None = None
    # "sum" or "mean" (one for all, or one per target); None: mean for per-atom units and non-energy
    # quantities, sum for total energies (geognn.targets.default_readout)
    readout: str | list[str] | None = None
    val_data_root: str | None = None  # validation data from another source (e.g. OC20's val LMDB); no test set
    limit: int | None = None  # read at most this many structures (per source)
    on_error: str = "raise"  # bad structure: "raise" (stop, naming it) or "skip" (log to skipped.csv)
    num_workers: int = 0  # DataLoader worker processes building graphs
    cache_graphs: bool | None = None  # build all graphs once; None: when <= 50,000 structures
    split: str = "random"  # "random" (val_fraction/test_fraction) or "qm9-standard" (110k/10k/rest)
    split_file: str | None = None  # a split.json (a run's, or write_split's): train/val/test by ids
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    # --- model
    backbone: str = "schnet"
    cutoff: float = 5.0  # Å
    max_neighbors: int | None = None
    # None: DEMO_BACKBONE_KWARGS for SchNet, the backbone's own defaults otherwise. Without a
    # "species" key the per-element weights get one row per element of the run's data (all splits;
    # every Z up to max_z for lazily read data, see geognn.train.loop.data_species); a list of
    # atomic numbers or symbols fixes them, null gives every Z up to max_z
    backbone_kwargs: dict | None = None
    frame_averaging: str | None = None  # passed to build_model when set
    # --- loss (errors are divided by the per-atom energy spread of the training set, see losses.py)
    # "mae" (L1) or "mse" per term. L1 with the cosine anneal: a lower test MAE for the same steps on QM9,
    # on par on MP-20 (benchmarks/recipe_compare.py)
    loss: str = "mae"
    energy_weight: float = 1.0
    forces_weight: float = 0.0  # > 0: learn forces (fixed atoms excluded)
    stress_weight: float = 0.0  # > 0: learn stress (periodic structures with a stress label)
    energy_normalisation: str = "per_atom"  # energy error divided by the number of atoms, or not
    fit_reference: bool = True  # per-element reference energies fitted on the training set
    # --- optimisation
    batch_size: int = 32  # structures per step per process
    accumulate: int = 1  # batches whose gradients are summed into one optimizer step
    lr: float = 1e-3  # AdamW peak learning rate
    weight_decay: float = 0.0
    grad_clip: float = 10.0  # max gradient norm (0: off)
    # "cosine": annealed from lr to min_lr_ratio * lr over the budget: the training time when time_limit > 0
    # (elapsed seconds / time_limit, or the fraction of epochs done if larger), else the epochs;
    # "plateau": x plateau_factor after `patience` epochs without improvement; "constant"
    scheduler: str = "cosine"
    # linear warmup from lr / warmup_steps to lr over the first steps; None: min(100, epochs * steps per epoch // 20)
    warmup_steps: int | None = None
    patience: int = 5  # plateau: epochs without validation improvement before the LR drops
    plateau_factor: float = 0.5
    min_lr_ratio: float = 0.01  # cosine: final lr / peak lr
    ema_decay: float = 0.0  # > 0: exponential moving average of weights, used to validate and save
    early_stopping: int = 0  # stop after this many epochs without validation improvement (0: off)
    amp: bool = False  # bfloat16 autocast where supported (CUDA); ignored on CPU
    # torch.compile the backbone (Model.compile); training steps with a force or stress loss run it eagerly
    compile: bool = False
    # --- run
    epochs: int = 1000  # upper bound; time_limit usually ends the default run first
    time_limit: float = 150.0  # seconds of training (0: no limit)
    checkpoint_every: int = 0  # also write state.pt every this many steps (0: only per epoch)
    seed: int = 0
    out: str = "runs/default"
    threads: int = 0  # torch threads (0: torch's default)
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda"
    ensemble: int = 1  # > 1: train this many members (seeds seed, seed+1, ...) into one checkpoint

    # ----------------------------------------------------------------------------- resolution
    @property
    def target_names(self) -> list[str] | None:
        """The labels asked for: ``target`` as a list, ["U0"] for qm9, None (the data's labels) otherwise."""
        if self.target:
            return [self.target] if isinstance(self.target, str) else list(self.target)
        return ["U0"] if self.dataset == "qm9" else None

    @property
    def target_name(self) -> str:
        """The first label learned: ``target``, or U0 (qm9) / energy (other datasets)."""
        names = self.target_names
        return names[0] if names else "energy"

    @property
    def data_path(self) -> str:
        if self.data_root:
            return str(self.data_root)
        if self.dataset == "qm9":
            return str(DEFAULT_QM9)
        raise ValueError(f"dataset '{self.dataset}' needs --data-root (data_root in the config)")

    def resolved_backbone_kwargs(self) -> dict:
        """The keyword arguments the backbone is built with."""
        if self.backbone_kwargs is not None:
            return dict(self.backbone_kwargs)
        return dict(DEMO_BACKBONE_KWARGS) if self.backbone == "schnet" else {}

    def validate(self) -> "TrainConfig":
        """Raise ValueError naming the first bad value (a wrong type included); returns self."""
        for field in dataclasses.fields(self):  # types first: a string or a list where a number belongs
            check_type(field.name, getattr(self, field.name), field.type)
        for key, allowed in CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"config {key}={getattr(self, key)!r}: choose one of {list(allowed)}")
        positive = ("batch_size", "accumulate", "epochs", "cutoff", "lr")
        for key in positive:
            if not getattr(self, key) > 0:
                raise ValueError(f"config {key}={getattr(self, key)!r} must be > 0")
        for key in (
            "energy_weight",
            "forces_weight",
            "stress_weight",
            "weight_decay",
            "grad_clip",
            "patience",
            "early_stopping",
            "time_limit",
            "checkpoint_every",
            "num_workers",
            "threads",
            "val_fraction",
            "test_fraction",
        ):
            if getattr(self, key) < 0:
                raise ValueError(f"config {key}={getattr(self, key)!r} must be >= 0")
        if self.warmup_steps is not None and not (isinstance(self.warmup_steps, int) and self.warmup_steps >= 0):
            raise ValueError(f"config warmup_steps={self.warmup_steps!r} must be an integer >= 0 or null (automatic)")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"config ema_decay={self.ema_decay!r} must be in [0, 1)")
        if self.energy_weight + self.forces_weight + self.stress_weight <= 0:
            raise ValueError("config: energy_weight, forces_weight and stress_weight are all 0: nothing to learn")
        if self.val_fraction <= 0:
            raise ValueError("config val_fraction must be > 0 (validation picks the best model)")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"config device={self.device!r}: choose auto, cpu, cuda or cuda:N")
        names = self.target_names
        if names is not None and (
            not names or len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names)
        ):
            raise ValueError(f"config target={self.target!r}: give one or more distinct label names")
        for key in ("unit", "readout"):
            values = self.per_target(key, len(names) if names else None)
            if key == "readout":
                bad = [v for v in values if v not in (None, "sum", "mean")]
                if bad:
                    raise ValueError(f"config readout={bad[0]!r}: choose one of ['sum', 'mean']")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"config limit={self.limit!r} must be >= 1 (or null: all structures)")
        if not (isinstance(self.ensemble, int) and self.ensemble >= 1):
            raise ValueError(f"config ensemble={self.ensemble!r} must be an integer >= 1")
        return self

    def per_target(self, key: str, n: int | None) -> list:
        """``unit`` or ``readout`` as one value per target (``n`` targets; None: not known yet).

        A single value (or a one-element list) applies to every target; a list must have one
        value per target; None gives [None] * n.
        """
        value = getattr(self, key)
        values = [value] if value is None or isinstance(value, str) else list(value)
        if len(values) == 1:
            return values * (n or 1)
        if n is not None and len(values) != n:
            raise ValueError(
                f"config {key}={value!r}: give one {key} for all targets or one per target "
                f"({n} target(s): {self.target_names})"
            )
        return values

    # ----------------------------------------------------------------------------- files
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def known_keys(cls) -> list[str]:
        return sorted(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> "TrainConfig":
        return cls().updated(values, source)

    def updated(self, values: dict, source: str = "config") -> "TrainConfig":
        """A copy with ``values`` applied; unknown keys raise ValueError listing the known ones. A
        string for a number-valued key that reads as a number becomes one (YAML's ``1e-3``)."""
        if not isinstance(values, dict):
            raise ValueError(f"{source}: expected a mapping of config keys, got {type(values).__name__}")
        unknown = sorted(set(values) - set(self.known_keys()))
        if unknown:
            raise ValueError(f"{source}: unknown config keys {unknown}; known: {self.known_keys()}")
        values = {key: _number(value) if "float" in _FIELD_TYPES[key] else value for key, value in values.items()}
        return dataclasses.replace(self, **values)

    @classmethod
    def from_file(cls, path: str | Path) -> "TrainConfig":
        """Read a YAML or JSON file of config keys."""
        return cls().updated(read_mapping(path), str(path))

    from_json = from_file  # config.json of a run folder


def read_mapping(path: str | Path) -> dict:
    """The mapping in a YAML/JSON file, with a one-line error when it is missing or malformed."""
    import yaml

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: a folder, not a config file")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such config file")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of config keys, got {type(values).__name__}")
    return values


def parse_assignment(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` from ``--set``; VALUE is read as YAML (numbers, true/false, null, {a: 1})."""
    import yaml

    if "=" not in text:
        raise ValueError(f"--set {text!r}: expected KEY=VALUE")
    key, value = text.split("=", 1)
    try:
        return key.strip().replace("-", "_"), yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise ValueError(f"--set {text!r}: VALUE is not valid YAML ({str(exc).splitlines()[0]})") from None


_FIELD_TYPES = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}


def _number(value: Any) -> Any:
    """A float field's value: YAML 1.1 reads ``1e-3`` (no dot) as a string; such strings become floats."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


#: What each annotation of a TrainConfig field accepts (bool is not a number here).
_TYPE_WORDS = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "dict": "a mapping",
    "list[str]": "a list of strings",
    "None": "null",
}


def check_type(key: str, value: Any, annotation: str) -> None:
    """ValueError naming ``key`` when ``value`` does not fit ``annotation`` (a field's type as
    written, e.g. ``"int | None"``); ints are accepted where floats are."""

    def fits(kind: str) -> bool:
        if kind == "None":
            return value is None
        if kind == "bool":
            return isinstance(value, bool)
        if kind in ("int", "float"):
            number = numbers.Real if kind == "float" else numbers.Integral
            return isinstance(value, number) and not isinstance(value, bool)
        if kind == "list[str]":
            return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
        return isinstance(value, {"str": str, "dict": dict}[kind])

    kinds = [k.strip() for k in str(annotation).split("|")]
    if not any(fits(k) for k in kinds):
        raise ValueError(f"config {key}={value!r}: expected {' or '.join(_TYPE_WORDS.get(k, k) for k in kinds)}")
