"""OC20 (Chanussot et al., ACS Catal. 2021) in the LMDB layout that fairchem/OCP writes, and a writer.

Layout (read and written here): one ``.lmdb`` file (LMDB ``subdir=False``), a folder of such
shards (``data.0000.lmdb``, ... read in sorted order), or an LMDB environment folder holding
``data.mdb``. In each, the value under the ASCII key ``b"0"``, ``b"1"``, ... is
``pickle.dumps(torch_geometric.data.Data, protocol=-1)`` with

====================  =========================  =====================================
key                   shape / type               meaning
====================  =========================  =====================================
``atomic_numbers``    [N] float32 (or long)      Z
``pos``               [N,3] float32, Å           positions (IS2RE: initial structure)
``cell``              [1,3,3] float32, Å         rows are lattice vectors
``natoms``            int                        N
``tags``              [N]                        0 subsurface, 1 surface, 2 adsorbate
``fixed``             [N] float32 (1 = fixed)    atoms fixed in the DFT relaxation
``sid``, ``fid``      int                        system id, frame id (S2EF)
``y_relaxed``         float, eV                  IS2RE target (``y_init`` initial energy)
``pos_relaxed``       [N,3], Å                   IS2RE relaxed positions
``y``, ``force``      float eV; [N,3] eV/Å       S2EF targets
====================  =========================  =====================================

and, when present, the key ``b"length"`` holds the pickled number of entries (otherwise the
LMDB entry count is used). Pickles of PyG 1.x ``Data`` (attributes directly in ``__dict__``)
and PyG 2.x (attributes in ``_store``) are both read.

Reading is lazy: shards are memory-mapped by LMDB, opened (read-only, no lock) on first use in
each process, and only the requested entry is unpickled, so datasets larger than RAM stream.
The handles live in a per-process registry, not in the dataset, so the dataset pickles to
DataLoader workers (fork or spawn) and each worker opens its own.

SECURITY: unpickling can run arbitrary code. geognn only unpickles the files you point it at,
and refuses pickled classes from outside torch, torch_geometric, numpy and plain containers,
which stops the usual payloads but is not a sandbox (torch's own rebuild functions are
allowed): open only LMDBs from a source you trust.

Bad entries (missing key, undecodable pickle, missing label) raise ``StructureError`` from
``dataset[i]`` naming the shard, key and sid; a reader cannot check 100M entries up front, so
``on_error="skip"`` is applied by the caller (the trainer skips the item and counts it).
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from ase import Atoms
from ase.constraints import FixAtoms
from tqdm.auto import tqdm

from ..io import StructureError
from .base import StructureDataset, check_on_error, set_fixed, stress_3x3

#: Tasks, the label that becomes ``info["energy"]``, and what else they carry.
TASKS = {"is2re": "y_relaxed", "s2ef": "y"}

_SAFE_BUILTINS = {
    "set",
    "frozenset",
    "slice",
    "complex",
    "bytearray",
    "range",
    "dict",
    "list",
    "tuple",
    "int",
    "float",
    "str",
    "bool",
    "bytes",
    "object",
}
_SAFE_MODULE_PREFIXES = ("torch", "torch_geometric", "numpy", "collections", "copyreg", "_codecs")


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only resolves classes from torch, torch_geometric, numpy and plain containers."""

    def find_class(self, module: str, name: str):
        if module == "builtins" and name in _SAFE_BUILTINS:
            return super().find_class(module, name)
        if module.split(".")[0] in _SAFE_MODULE_PREFIXES:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} (not a torch / PyG / numpy type)")


def unpickle_data(buf: bytes) -> dict:
    """The fields of a pickled PyG ``Data`` (1.x or 2.x layout) or dict, as a plain dict."""
    obj = _RestrictedUnpickler(io.BytesIO(buf)).load()
    if isinstance(obj, dict):
        return dict(obj)
    state = getattr(obj, "__dict__", None)
    if state is None:
        raise TypeError(f"expected a pickled torch_geometric Data, got {type(obj).__name__}")
    store = state.get("_store")
    if store is not None:  # PyG 2.x: attributes live in a GlobalStorage
        return dict(store.items())
    # PyG 1.x: attributes directly in __dict__, plus private counters such as __num_nodes__
    return {k: v for k, v in state.items() if not k.startswith("_")}


def _array(value, dtype=np.float64) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype)


def _scalar(value):
    if isinstance(value, torch.Tensor):
        value = value.reshape(-1)[0].item() if value.numel() == 1 else value.tolist()
    elif isinstance(value, np.ndarray):
        value = value.reshape(-1)[0].item() if value.size == 1 else value.tolist()
    return value


def data_to_atoms(fields: dict, task: str, source: str, slab_pbc: bool = False) -> Atoms:
    """``ase.Atoms`` from the fields of an OC20 ``Data`` (see the module table); labels per ``task``."""
    try:
        numbers = _array(fields["atomic_numbers"]).round().astype(np.int64).reshape(-1)
        positions = _array(fields["pos"]).reshape(-1, 3)
    except KeyError as exc:
        raise StructureError(source, f"entry lacks {exc.args[0]!r}") from None
    if len(numbers) != len(positions):
        raise StructureError(source, f"{len(numbers)} atomic numbers but {len(positions)} positions")
    natoms = fields.get("natoms")
    if natoms is not None and int(_scalar(natoms)) != len(numbers):
        raise StructureError(source, f"natoms={int(_scalar(natoms))} but {len(numbers)} atoms stored")
    if fields.get("cell") is not None:
        cell = _array(fields["cell"]).reshape(3, 3)
        pbc = [True, True, not slab_pbc]
        if fields.get("pbc") is not None:
            pbc = _array(fields["pbc"], bool).reshape(-1)[:3].tolist()
            if slab_pbc:
                pbc[2] = False
    else:
        cell, pbc = np.zeros((3, 3)), False
    atoms = Atoms(numbers=numbers, positions=positions, cell=cell, pbc=pbc)
    if fields.get("tags") is not None:
        atoms.set_tags(_array(fields["tags"]).round().astype(np.int64).reshape(-1))
    if fields.get("fixed") is not None:
        set_fixed(atoms, _array(fields["fixed"]) > 0.5)
    for key in ("sid", "fid"):
        if fields.get(key) is not None:
            atoms.info[key] = _scalar(fields[key])
    for key in ("y_init", "y_relaxed", "y"):
        if fields.get(key) is not None:
            atoms.info[key] = float(_scalar(fields[key]))
    if fields.get("pos_relaxed") is not None:
        atoms.arrays["pos_relaxed"] = _array(fields["pos_relaxed"]).reshape(-1, 3)
    label = TASKS[task]
    energy = fields.get(label, fields.get("energy") if task == "s2ef" else None)
    if energy is None:
        raise StructureError(source, f"entry has no {label!r} ({task.upper()} target); fields: {sorted(fields)}")
    atoms.info["energy"] = float(_scalar(energy))
    if task == "s2ef":
        forces = fields.get("force", fields.get("forces"))
        if forces is None:
            raise StructureError(source, f"entry has no 'force' (S2EF target); fields: {sorted(fields)}")
        forces = _array(forces)
        if forces.shape != (len(numbers), 3):
            raise StructureError(source, f"forces have shape {forces.shape}, expected ({len(numbers)}, 3)")
        atoms.arrays["forces"] = forces
        if fields.get("stress") is not None:
            atoms.info["stress"] = stress_3x3(_array(fields["stress"]).reshape(-1))
    if not np.isfinite(atoms.info["energy"]):
        raise StructureError(source, f"non-finite {label} ({atoms.info['energy']})")
    return atoms


def _shards(root: Path) -> list[tuple[Path, bool]]:
    """``(resolved path, subdir)`` of each LMDB of ``root``."""
    root = root.resolve()
    if root.is_file():
        return [(root, False)]
    if (root / "data.mdb").is_file():
        return [(root, True)]
    files = sorted(root.glob("*.lmdb"))
    if not files:
        raise StructureError(str(root), "folder holds no *.lmdb files (and no data.mdb)")
    return [(f, False) for f in files]


#: LMDB environments open in this process, by resolved path (py-lmdb allows one per file and
#: process, and an environment must not be used across a fork): shared by all datasets.
_ENVS: dict[str, object] = {}
_ENVS_PID = os.getpid()


def _open_env(path: Path, subdir: bool):
    """The read-only environment of ``path`` in this process (opened on first use)."""
    import lmdb

    global _ENVS_PID
    if _ENVS_PID != os.getpid():  # a forked worker: the parent's handles are not ours
        _ENVS.clear()
        _ENVS_PID = os.getpid()
    key = str(path)  # callers pass resolved paths (see _shards): one file, one key
    env = _ENVS.get(key)
    if env is None:
        try:
            env = lmdb.open(
                key, subdir=subdir, readonly=True, lock=False, readahead=False, meminit=False, max_readers=256
            )
        except lmdb.Error as exc:
            raise StructureError(str(path), f"not a readable LMDB ({exc})") from exc
        _ENVS[key] = env
    return env


def close_all() -> None:
    """Close every LMDB environment this process opened (e.g. before rewriting the files)."""
    for env in _ENVS.values():
        env.close()
    _ENVS.clear()


class _ShardIds(Sequence):
    """``"<shard file>/<key>"`` for every entry, computed on demand (no list of 100M strings)."""

    def __init__(self, names: list[str], offsets: np.ndarray):
        self._names, self._offsets = names, offsets

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(i)
        s = int(np.searchsorted(self._offsets, i, side="right") - 1)
        return f"{self._names[s]}/{i - self._offsets[s]}"


class OC20LmdbDataset(StructureDataset):
    """Lazy, memory-mapped OC20 LMDB dataset (IS2RE or S2EF), items as ``ase.Atoms``.

    Args:
        root: an ``.lmdb`` file, a folder of ``*.lmdb`` shards, or an LMDB folder with ``data.mdb``.
        task: ``"is2re"`` (``info["energy"]`` = ``y_relaxed``, eV; ``y_init`` and
            ``arrays["pos_relaxed"]`` when stored) or ``"s2ef"`` (``info["energy"]`` = ``y``, eV;
            ``arrays["forces"]`` = ``force``, eV/Å).
        slab_pbc: make slabs periodic in the surface plane only (pbc = T,T,F); OC20 itself uses
            T,T,T with vacuum along c.
        limit: the first ``limit`` entries only.

    Items carry tags (``get_tags()``), the fixed atoms as a ``FixAtoms`` constraint (exclude them
    from the force loss), ``info["sid"]`` (and ``fid``). ``ids[i]`` is ``"<shard file>/<key>"``.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        task: str = "is2re",
        on_error: str = "raise",
        limit: int | None = None,
        slab_pbc: bool = False,
    ):
        check_on_error(on_error)
        if task not in TASKS:
            raise ValueError(f"unknown OC20 task {task!r}; choose one of {sorted(TASKS)}")
        self.root, self.task, self.slab_pbc, self.on_error = Path(root), task, slab_pbc, on_error
        self._shards = _shards(self.root)
        lengths = []
        for path, subdir in self._shards:
            env = _open_env(path, subdir)
            with env.begin() as txn:
                raw = txn.get(b"length")
                if raw is not None:
                    try:
                        n = int(pickle.loads(raw))
                    except Exception as exc:
                        raise StructureError(str(path), f"unreadable 'length' entry ({exc})") from exc
                else:
                    n = int(env.stat()["entries"])
            lengths.append(n)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        if limit is not None:
            total = min(int(limit), int(offsets[-1]))
            offsets = np.minimum(offsets, total)
        self._offsets = offsets
        energy_unit = {"energy": "eV"}
        targets = {**energy_unit, "forces": "eV/Å"} if task == "s2ef" else {**energy_unit, "y_init": "eV"}
        super().__init__([], targets)
        self.ids = _ShardIds([p.name for p, _ in self._shards], offsets)

    def _env(self, s: int):
        return _open_env(*self._shards[s])

    def locate(self, i: int) -> tuple[int, int]:
        """``(shard, key)`` of item ``i``."""
        s = int(np.searchsorted(self._offsets, i, side="right") - 1)
        return s, int(i - self._offsets[s])

    def raw(self, i: int) -> dict:
        """The stored fields of item ``i`` (unpickled, unconverted)."""
        s, key = self.locate(i)
        source = f"{self._shards[s][0]}/{key}"
        with self._env(s).begin() as txn:
            buf = txn.get(str(key).encode("ascii"))
        if buf is None:
            raise StructureError(source, "no such entry (the 'length' key promises more entries than stored?)")
        try:
            return unpickle_data(buf)
        except Exception as exc:
            raise StructureError(source, f"cannot unpickle the entry ({type(exc).__name__}: {exc})") from exc

    def _get(self, i: int) -> Atoms:
        fields = self.raw(i)
        sid = fields.get("sid")
        s, key = self.locate(i)
        source = f"{self._shards[s][0]}/{key}" + (f" (sid {_scalar(sid)})" if sid is not None else "")
        return data_to_atoms(fields, self.task, source, self.slab_pbc)


# --------------------------------------------------------------------------- writer
def atoms_to_data(atoms: Atoms, index: int, task: str = "s2ef"):
    """A fairchem-layout ``Data`` of ``atoms`` (float32 like fairchem's AtomsToGraphs).

    Energy from ``info["energy"]`` or the attached calculator (eV); forces from
    ``arrays["forces"]`` or the calculator (eV/Å); ``sid`` from ``info["sid"]`` else ``index``.
    """
    from torch_geometric.data import Data

    calc_results = getattr(atoms.calc, "results", {}) if atoms.calc is not None else {}
    n = len(atoms)
    fixed = torch.zeros(n, dtype=torch.float32)
    for c in atoms.constraints:
        if isinstance(c, FixAtoms):
            fixed[torch.as_tensor(c.get_indices(), dtype=torch.long)] = 1.0
    data = Data(
        atomic_numbers=torch.tensor(atoms.numbers, dtype=torch.float32),
        pos=torch.tensor(atoms.positions, dtype=torch.float32),
        cell=torch.tensor(np.asarray(atoms.cell[:]), dtype=torch.float32).view(1, 3, 3),
        natoms=n,
        tags=torch.tensor(atoms.get_tags(), dtype=torch.long),
        fixed=fixed,
        sid=atoms.info.get("sid", index),
    )
    if "fid" in atoms.info:
        data.fid = atoms.info["fid"]
    energy = atoms.info.get("energy", calc_results.get("energy"))
    if energy is not None:
        data[TASKS[task]] = float(energy)
    if "y_init" in atoms.info:
        data.y_init = float(atoms.info["y_init"])
    forces = atoms.arrays.get("forces", calc_results.get("forces"))
    if forces is not None:
        data.force = torch.tensor(np.asarray(forces), dtype=torch.float32)
    stress = atoms.info.get("stress", calc_results.get("stress"))
    if stress is not None and task == "s2ef":
        data.stress = torch.tensor(stress_3x3(stress), dtype=torch.float32).view(1, 3, 3)
    if "pos_relaxed" in atoms.arrays:
        data.pos_relaxed = torch.tensor(atoms.arrays["pos_relaxed"], dtype=torch.float32)
    return data


def write_lmdb_data(path: str | Path, items: Iterable, *, map_size: int = 1 << 40, commit_every: int = 1000) -> int:
    """Write ``items`` (PyG ``Data`` or anything picklable) to one ``.lmdb`` file in fairchem's
    layout: keys ``b"0"``..., values ``pickle.dumps(item, protocol=-1)``, and ``b"length"``.
    Returns the number written. ``map_size`` is the (sparse) maximum file size in bytes."""
    import lmdb

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stale = _ENVS.pop(str(path.resolve()), None)  # a reader of the old file in this process
    if stale is not None:
        stale.close()
    env = lmdb.open(str(path), map_size=map_size, subdir=False, meminit=False, map_async=True)
    n = 0
    try:
        txn = env.begin(write=True)
        for item in items:
            txn.put(str(n).encode("ascii"), pickle.dumps(item, protocol=-1))
            n += 1
            if n % commit_every == 0:
                txn.commit()
                txn = env.begin(write=True)
        txn.put(b"length", pickle.dumps(n, protocol=-1))
        txn.commit()
        env.sync()
    finally:
        env.close()
    lock = path.with_name(path.name + "-lock")  # LMDB's reader table; useless once written
    if lock.is_file():
        lock.unlink()
    return n


def write_lmdb(
    path: str | Path,
    structures: Iterable[Atoms],
    *,
    task: str = "s2ef",
    shard_size: int | None = None,
    map_size: int = 1 << 40,
    progress: bool = True,
) -> int:
    """Write ASE structures as an OC20-style LMDB (readable here and by fairchem's LmdbDataset).

    Args:
        path: the ``.lmdb`` file; with ``shard_size``, a folder that gets ``data.0000.lmdb``, ...
        structures: ``ase.Atoms`` with energy (``info["energy"]`` or a calculator, eV), forces
            (``arrays["forces"]`` or a calculator, eV/Å), tags, ``FixAtoms`` constraints.
        task: ``"s2ef"`` stores the energy as ``y`` (and forces as ``force``), ``"is2re"`` as ``y_relaxed``.
        shard_size: entries per shard (None: one file).

    Positions, cell and forces are stored as float32, as fairchem does. Returns the count written.
    """
    if task not in TASKS:
        raise ValueError(f"unknown OC20 task {task!r}; choose one of {sorted(TASKS)}")
    path = Path(path)
    items = (
        atoms_to_data(a, k, task)
        for k, a in enumerate(tqdm(structures, desc=f"writing {path.name}", unit="structure", disable=not progress))
    )
    if shard_size is None:
        return write_lmdb_data(path, items, map_size=map_size)
    if shard_size < 1:
        raise ValueError(f"shard_size must be a positive integer, got {shard_size}")
    total, shard = 0, 0
    while True:
        chunk = []
        for item in items:
            chunk.append(item)
            if len(chunk) == shard_size:
                break
        if not chunk:
            break
        total += write_lmdb_data(path / f"data.{shard:04d}.lmdb", chunk, map_size=map_size)
        shard += 1
    return total
