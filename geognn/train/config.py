"""Training configuration: one dataclass, written next to every run as ``config.json``."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

#: The QM9 subset shipped with the package (see data/qm9/README.md for its origin and licence).
DEFAULT_QM9 = Path(__file__).resolve().parents[2] / "data" / "qm9" / "qm9pack_subset_stride26.csv"


#: The default job's SchNet: smaller than SchNet's defaults so it learns within minutes on 2 cores.
DEMO_BACKBONE_KWARGS = {"hidden_channels": 64, "num_filters": 64, "num_layers": 3, "num_gaussians": 32}


@dataclass
class TrainConfig:
    """Everything a run needs; ``geognn train`` fills it from the command line.

    Energies in eV, lengths in Å, time in seconds.
    """

    dataset: str = "qm9"  # qm9 (qm9pack CSV or folder of dsgdb9nsd_*.xyz)
    data_root: str = str(DEFAULT_QM9)
    target: str = "U0"  # property name (geognn.datasets.qm9.QM9_PROPERTIES for QM9)
    limit: int | None = None  # read at most this many structures
    backbone: str = "schnet"
    cutoff: float = 5.0  # Å
    # None: DEMO_BACKBONE_KWARGS for the default job's SchNet, the backbone's own defaults otherwise
    backbone_kwargs: dict | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    batch_size: int = 32
    lr: float = 1e-3  # AdamW peak learning rate
    weight_decay: float = 0.0
    epochs: int = 1000  # upper bound; time_limit usually ends the run first
    time_limit: float = 150.0  # seconds of training (0: no limit)
    patience: int = 5  # epochs without validation improvement before the LR is halved
    seed: int = 0
    out: str = "runs/default"
    threads: int = 0  # torch threads (0: torch's default)

    def resolved_backbone_kwargs(self) -> dict:
        """The keyword arguments the backbone is built with."""
        if self.backbone_kwargs is not None:
            return dict(self.backbone_kwargs)
        return dict(DEMO_BACKBONE_KWARGS) if self.backbone == "schnet" else {}

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> "TrainConfig":
        values = json.loads(Path(path).read_text())
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{path}: unknown config keys {unknown}; known: {sorted(known)}")
        return cls(**values)
