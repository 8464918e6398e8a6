"""From a dataset of ``ase.Atoms`` to labelled graphs and batches.

``open_structures`` opens the configured dataset (``geognn.datasets.open_dataset``);
``resolve_targets`` turns the config and the data's labels into ``geognn.targets.Target`` s;
``GraphDataset`` turns item i into a graph carrying exactly the labels the run learns
(``graph[name]`` [1] in the target's unit for each target, ``forces`` [N,3] eV/Å, ``stress``
[1,3,3] eV/Å³, ``fixed`` [N]).
A bad structure becomes a ``Skipped`` marker when ``on_error="skip"``; ``collate_graphs``
drops those and hands them to the loop, which logs them to ``skipped.csv``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .. import conventions as K
from ..graph.build import build_graph, collate
from ..io import StructureError
from ..targets import Target, default_readout, is_per_atom_unit, is_total_energy_unit
from .config import TrainConfig

#: cache_graphs=None builds all graphs up front when a dataset has at most this many structures.
CACHE_LIMIT = 50_000


class StructureList(torch.utils.data.Dataset):
    """A list of ``ase.Atoms`` with the attributes of ``geognn.datasets.StructureDataset``."""

    def __init__(self, structures: Sequence, targets: dict[str, str] | None = None):
        self.structures = list(structures)
        self.ids = [str(a.info.get("id", a.info.get("source", i))) for i, a in enumerate(self.structures)]
        self.targets = dict(targets or {"energy": "eV"})
        self.skipped: list[tuple[str, str]] = []

    def __len__(self) -> int:
        return len(self.structures)

    def __getitem__(self, i):
        return self.structures[i]


def open_structures(config: TrainConfig):
    """The configured dataset: indexable, ``len``, ``ids``, ``targets`` (name -> unit), ``skipped``.

    With ``val_data_root`` (e.g. OC20's official val LMDB) the result is ``Concatenated``
    (training data, then validation data) and carries the fixed ``split``.
    """
    train = _open(config, config.data_path)
    if not config.val_data_root:
        return train
    return Concatenated([train, _open(config, config.val_data_root)])


def _open(config: TrainConfig, root: str):
    from pathlib import Path

    if not Path(root).exists():
        raise FileNotFoundError(f"{root}: {config.dataset} data not found (pass --data-root)")
    names = config.target_names
    if config.dataset == "qm9":
        from ..datasets import qm9

        known = getattr(qm9, "QM9_TARGETS", qm9.QM9_PROPERTIES)
        for name in names:
            if name not in known:
                raise ValueError(f"unknown QM9 target '{name}'; choose one of {list(known)}")
    options = {}
    if config.unit is not None:
        if config.dataset in ("qm9", "oc20-is2re", "oc20-s2ef"):
            raise ValueError(
                f"{config.dataset} labels come in the dataset's own units; --unit (config unit) is "
                "for cif-folder, extxyz and ase-db"
            )
        units = config.per_target("unit", len(names) if names else None)
        if config.dataset == "cif-folder":
            from ..datasets.folders import cif_folder_labels

            labels = names or cif_folder_labels(root)
            if len(units) > 1 and len(units) != len(labels):
                raise ValueError(
                    f"{len(units)} units {units} for the {len(labels)} label(s) {labels} of {root}: "
                    "give one unit for all or one per label"
                )
            options["energy_unit"] = units[0] if len(set(units)) == 1 else dict(zip(labels, units))
        elif len(set(units)) == 1 and is_total_energy_unit(units[0]):
            options["energy_unit"] = units[0]  # energies and forces in that unit
        else:
            if names is None and len(units) > 1:
                raise ValueError(
                    f"{len(units)} units {units} but no --target: name the {config.dataset} labels "
                    "they belong to (one --target per --unit)"
                )
            options["units"] = dict(zip(names or ["energy"], units))
    try:
        from ..datasets import open_dataset
    except ImportError:  # datasets package without the common interface: QM9 only
        if config.dataset != "qm9":
            raise ValueError(f"dataset '{config.dataset}' needs geognn.datasets.open_dataset") from None
        from ..datasets.qm9 import QM9_PROPERTIES, load_qm9

        unit = QM9_PROPERTIES[config.target_name].unit
        return StructureList(load_qm9(root, config.limit), {config.target_name: unit})
    target = names if config.dataset != "qm9" else names[0]
    if config.dataset.startswith("oc20"):
        target = config.target  # fixed by the task; open_dataset checks a given name
    return open_dataset(config.dataset, root, target=target, on_error=config.on_error, limit=config.limit, **options)


def resolve_targets(config: TrainConfig, dataset) -> list[Target]:
    """The run's targets: names from the config (or the data's labels), units from the data, readouts
    from the config or ``geognn.targets.default_readout``. Warns when a per-atom unit is summed."""
    names = config.target_names or list(getattr(dataset, "labels", None) or ["energy"])
    units = getattr(dataset, "targets", {}) or {}
    readouts = config.per_target("readout", len(names))
    out = []
    for name, readout in zip(names, readouts):
        unit = units.get(name, units.get("energy", "eV") if name == "energy" else "")
        target = Target(name, unit, readout or default_readout(unit, name))
        if target.readout == "sum" and is_per_atom_unit(unit):
            warnings.warn(
                f"target {name!r} is in {unit} (a per-atom quantity) but its readout is 'sum': the "
                "prediction will grow with the number of atoms; use --readout mean for intensive labels",
                UserWarning,
                stacklevel=2,
            )
        out.append(target)
    return out


class Concatenated(torch.utils.data.Dataset):
    """Training structures followed by validation structures from another source; ``split`` says which."""

    def __init__(self, parts):
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts]).tolist()
        self.ids = [i for p in self.parts for i in getattr(p, "ids", range(len(p)))]
        self.targets = dict(getattr(self.parts[0], "targets", {}))
        self.labels = getattr(self.parts[0], "labels", None)
        self.skipped = [s for p in self.parts for s in getattr(p, "skipped", [])]
        n_train = self.offsets[1]
        self.split = {"train": list(range(n_train)), "val": list(range(n_train, self.offsets[-1])), "test": []}

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, i: int):
        k = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return self.parts[k][i - self.offsets[k]]


def target_unit(dataset, target: str) -> str:
    units = getattr(dataset, "targets", {}) or {}
    return units.get(target, units.get("energy", "eV") if target == "energy" else "")


@dataclass(frozen=True)
class Skipped:
    """A structure left out of training: its id and why."""

    id: str
    reason: str


def structure_id(atoms, index: int) -> str:
    return str(atoms.info.get("id", atoms.info.get("source", f"#{index}")))


def target_value(atoms, target: str):
    """The label ``target`` of ``atoms``: ``info[target]`` (for "energy" also the calculator's energy), or None."""
    if target in atoms.info:
        return atoms.info[target]
    results = getattr(atoms.calc, "results", {}) if atoms.calc is not None else {}
    return results.get("energy") if target == "energy" else None


def labelled_graph(atoms, index: int, config: TrainConfig, targets: Sequence[str] | None = None):
    """Graph of ``atoms`` with the run's labels: ``graph[name]`` [1] for each of ``targets``
    (default: the config's), forces/stress when their weights are > 0.

    A missing or non-finite label raises StructureError naming the structure (a bad item).
    """
    sid = structure_id(atoms, index)
    targets = list(targets or config.target_names or ["energy"])
    with warnings.catch_warnings():  # isolated atoms etc.: the model copes, training stays quiet
        warnings.simplefilter("ignore")
        graph = build_graph(atoms, config.cutoff, config.max_neighbors)
    for key in (K.ENERGY, K.FORCES, K.STRESS, K.TAGS, K.FIXED):
        if key in graph:
            del graph[key]
    dtype = graph[K.POS].dtype
    for name in targets:
        value = target_value(atoms, name)
        try:
            value = None if value is None else float(value)
        except (TypeError, ValueError):
            raise StructureError(sid, f"label '{name}' is not a number ({value!r})") from None
        if value is None or not np.isfinite(value):
            raise StructureError(sid, f"no finite '{name}' label" + ("" if value is None else f" ({value})"))
        graph[name] = torch.tensor([value], dtype=dtype)
    n = len(atoms)
    if config.forces_weight > 0:
        forces = atoms.arrays.get("forces")
        if forces is None and atoms.calc is not None:
            forces = atoms.calc.results.get("forces")
        if forces is None:
            raise StructureError(sid, "forces_weight > 0 but the structure has no forces")
        graph[K.FORCES] = torch.as_tensor(np.asarray(forces, dtype=np.float64), dtype=dtype).reshape(n, 3)
    if config.stress_weight > 0:
        stress = atoms.info.get("stress")
        if stress is None and atoms.calc is not None:
            stress = atoms.calc.results.get("stress")
        stress = np.full((3, 3), np.nan) if stress is None else np.asarray(stress, dtype=np.float64)
        if stress.shape == (6,):  # Voigt xx yy zz yz xz xy
            xx, yy, zz, yz, xz, xy = stress
            stress = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
        graph[K.STRESS] = torch.as_tensor(stress, dtype=dtype).reshape(1, 3, 3)  # NaN: no label
    fixed = np.zeros(n, dtype=bool)
    for constraint in atoms.constraints:
        if type(constraint).__name__ == "FixAtoms":
            fixed[constraint.get_indices()] = True
    graph[K.FIXED] = torch.as_tensor(fixed)
    graph[K.TAGS] = torch.as_tensor(atoms.get_tags(), dtype=torch.long)
    graph["sid"] = sid
    return graph


class GraphDataset(torch.utils.data.Dataset):
    """Item i of ``structures`` as a labelled graph (built on access, or all at once with ``cache``)."""

    def __init__(
        self,
        structures,
        config: TrainConfig,
        cache: bool | None = None,
        progress: bool = False,
        targets: Sequence[str] | None = None,
    ):
        self.structures = structures
        self.config = config
        self.targets = list(targets or config.target_names or ["energy"])  # label names
        self.cache = len(structures) <= CACHE_LIMIT if cache is None else bool(cache)
        self.graphs = None
        if self.cache:
            from tqdm.auto import tqdm

            self.graphs = [
                self._build(i)
                for i in tqdm(
                    range(len(structures)), desc="building graphs", unit="structure", leave=False, disable=not progress
                )
            ]

    def _build(self, i: int):
        try:
            atoms = self.structures[i]
            return labelled_graph(atoms, i, self.config, self.targets)
        except StructureError as exc:  # the loop raises or logs it (workers cannot raise it intact)
            return Skipped(exc.source, exc.problem)

    def __len__(self) -> int:
        return len(self.structures)

    def __getitem__(self, i: int):
        return self.graphs[i] if self.graphs is not None else self._build(i)


@dataclass
class LoadedBatch:
    """A collated batch (None when every structure in it was skipped) and the skipped ones."""

    batch: object
    skipped: list[Skipped]
    size: int  # structures in ``batch``


def collate_graphs(items) -> LoadedBatch:
    """DataLoader ``collate_fn``: drop ``Skipped`` markers, collate the rest."""
    graphs = [g for g in items if not isinstance(g, Skipped)]
    skipped = [g for g in items if isinstance(g, Skipped)]
    return LoadedBatch(collate(graphs) if graphs else None, skipped, len(graphs))


class EpochBatches(torch.utils.data.Sampler):
    """Batches of indices for one epoch: a permutation seeded by (seed, epoch), sharded over ranks.

    Rank r takes every world-th index of the permutation (padded by wrapping so that all ranks
    take the same number of steps), so the order depends only on (seed, epoch) and a run resumes
    mid-epoch by skipping ``start`` batches. ``set_epoch`` picks the epoch and first batch.
    """

    def __init__(
        self, indices: Sequence[int], batch_size: int, seed: int, shuffle: bool = True, rank: int = 0, world: int = 1
    ):
        self.indices, self.batch_size, self.seed = list(indices), batch_size, seed
        self.shuffle, self.rank, self.world = shuffle, rank, world
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def shard(self) -> list[int]:
        order = self.indices
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = [self.indices[k] for k in torch.randperm(len(self.indices), generator=g).tolist()]
        if self.world > 1:
            total = -(-len(order) // self.world) * self.world
            order = (order * (total // max(len(order), 1) + 1))[:total] if self.shuffle else order
            order = order[self.rank :: self.world]
        return order

    def batches(self) -> list[list[int]]:
        shard = self.shard()
        return [shard[k : k + self.batch_size] for k in range(0, len(shard), self.batch_size)]

    def __len__(self) -> int:
        return len(self.batches())

    def __iter__(self):
        return iter(self.batches()[self.start :])


def make_loader(dataset: GraphDataset, sampler: EpochBatches, num_workers: int):
    # own generator: creating an iterator draws a seed from it, which must not touch the global RNG
    # (its state is part of the checkpoint)
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_graphs,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(sampler.seed),
    )
