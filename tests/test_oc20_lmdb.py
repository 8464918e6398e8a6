"""OC20 LMDBs: the 8 real OC20 IS2RE systems (shared/data/oc20/faenet_is2re_bs8.pt) written in
fairchem's layout (by plain lmdb + pickle here, as fairchem does, and by geognn's writer) and read
back; PyG 1.x pickles, shards, a missing ``length`` key, bad entries and DataLoader workers."""

from __future__ import annotations

import multiprocessing
import os
import pickle

import lmdb
import numpy as np
import pytest
import torch
import torch_geometric.data.data as pyg_data
from ase.calculators.singlepoint import SinglePointCalculator
from conftest import load_oc20_reference_graphs

import geognn
from geognn import conventions as K
from geognn.datasets import open_dataset
from geognn.datasets.oc20 import close_all, write_lmdb
from geognn.io import StructureError

SIDS = [2077917, 1302564, 1874170, 2029193, 439115, 1278546, 1380110, 2188587]


def fairchem_style_lmdb(path, items, with_length=True):
    """What fairchem's preprocessing does, written out with plain lmdb: ascii keys, pickled Data."""
    env = lmdb.open(str(path), map_size=1 << 30, subdir=False, meminit=False, map_async=True)
    with env.begin(write=True) as txn:
        for k, item in enumerate(items):
            txn.put(f"{k}".encode("ascii"), pickle.dumps(item, protocol=-1))
        if with_length:
            txn.put("length".encode("ascii"), pickle.dumps(len(items), protocol=-1))
    env.sync()
    env.close()
    return path


@pytest.fixture(autouse=True)
def _close_envs():
    yield
    close_all()


def assert_matches(atoms, g):
    """An item read back equals the original PyG graph, tensor for tensor."""
    assert atoms.numbers.tolist() == g.atomic_numbers.long().tolist()
    assert torch.equal(torch.tensor(atoms.positions, dtype=torch.float32), g.pos)
    assert torch.equal(torch.tensor(np.asarray(atoms.cell[:]), dtype=torch.float32), g.cell[0])
    assert atoms.get_tags().tolist() == g.tags.long().tolist()
    fixed = np.zeros(len(atoms), bool)
    for c in atoms.constraints:
        fixed[c.get_indices()] = True
    assert fixed.tolist() == (g.fixed > 0.5).tolist()
    assert atoms.info["sid"] == int(g.sid) and atoms.pbc.all()


def test_is2re_real_systems_round_trip(tmp_path):
    graphs = load_oc20_reference_graphs()
    path = fairchem_style_lmdb(tmp_path / "data.lmdb", graphs)
    ds = open_dataset("oc20-is2re", path)
    assert len(ds) == 8 and ds.ids[0] == "data.lmdb/0" and ds.targets["energy"] == "eV"
    assert [ds[k].info["sid"] for k in range(8)] == SIDS
    assert [len(ds[k]) for k in range(8)] == [65, 172, 24, 49, 52, 54, 78, 93]
    for k, g in enumerate(graphs):
        a = ds[k]
        assert_matches(a, g)
        assert a.info["energy"] == float(g.y_relaxed) and a.info["y_init"] == float(g.y_init)
        assert torch.equal(torch.tensor(a.arrays["pos_relaxed"], dtype=torch.float32), g.pos_relaxed)
        assert "forces" not in a.arrays  # IS2RE: energy only
    assert min(ds[k].info["energy"] for k in range(8)) == pytest.approx(-4.92, abs=0.01)
    # the graph builder keeps tags and fixed atoms for the backbones and the force loss
    graph = geognn.build_graph(ds[0], 6.0)
    assert graph[K.TAGS].tolist() == graphs[0].tags.long().tolist()
    assert graph[K.FIXED].tolist() == (graphs[0].fixed > 0.5).tolist()
    slab = open_dataset("oc20-is2re", path, slab_pbc=True)[0]
    assert slab.pbc.tolist() == [True, True, False]


def test_writer_layout_and_s2ef_round_trip(tmp_path):
    graphs = load_oc20_reference_graphs()
    structures = open_dataset("oc20-is2re", fairchem_style_lmdb(tmp_path / "src.lmdb", graphs))
    frames = []
    for k in range(len(structures)):
        a = structures[k]
        a.calc = SinglePointCalculator(a, energy=float(graphs[k].y_init), forces=graphs[k].force.double().numpy())
        del a.info["energy"], a.info["y_init"]
        frames.append(a)
    n = write_lmdb(tmp_path / "s2ef.lmdb", frames, task="s2ef", progress=False)
    assert n == 8
    # the layout, read with plain lmdb + pickle (what fairchem's LmdbDataset does)
    env = lmdb.open(str(tmp_path / "s2ef.lmdb"), subdir=False, readonly=True, lock=False)
    with env.begin() as txn:
        keys = sorted(k for k, _ in txn.cursor())
        assert keys == sorted([str(i).encode("ascii") for i in range(8)] + [b"length"])
        assert pickle.loads(txn.get(b"length")) == 8
        d = pickle.loads(txn.get(b"1"))
    env.close()
    g = graphs[1]
    assert isinstance(d, pyg_data.Data) and d.natoms == 172 and d.sid == SIDS[1]
    assert d.cell.shape == (1, 3, 3) and d.pos.dtype == torch.float32 and d.atomic_numbers.dtype == torch.float32
    assert torch.equal(d.pos, g.pos) and torch.equal(d.fixed, g.fixed) and torch.equal(d.force, g.force)
    assert d.y == float(g.y_init) and torch.equal(d.tags, g.tags.long())
    ds = open_dataset("oc20-s2ef", tmp_path / "s2ef.lmdb")
    assert ds.targets == {"energy": "eV", "forces": "eV/Å"}
    for k in range(8):
        assert_matches(ds[k], graphs[k])
        assert ds[k].info["energy"] == float(graphs[k].y_init)
        assert torch.equal(torch.tensor(ds[k].arrays["forces"], dtype=torch.float32), graphs[k].force)
    with pytest.raises(StructureError, match=r"s2ef.lmdb/0 \(sid 2077917\).*no 'y_relaxed'"):
        open_dataset("oc20-is2re", tmp_path / "s2ef.lmdb")[0]


def test_pyg1_pickles(tmp_path, monkeypatch):
    """A Data pickled by PyG 1.x: the class plus a plain __dict__ of tensors (no ``_store``)."""
    graphs = load_oc20_reference_graphs()[:2]

    class Data:  # PyG 1.x's Data kept its attributes in __dict__; pickled as that state
        pass

    Data.__module__, Data.__qualname__ = "torch_geometric.data.data", "Data"
    legacy = []
    for g in graphs:
        d = Data()
        d.__dict__.update(
            {
                key: g[key]
                for key in ("atomic_numbers", "pos", "cell", "natoms", "tags", "fixed", "sid", "y_init", "y_relaxed")
            }
        )
        d.__dict__["__num_nodes__"] = None
        legacy.append(d)
    monkeypatch.setattr(pyg_data, "Data", Data)
    blobs = [pickle.dumps(d, protocol=-1) for d in legacy]
    monkeypatch.undo()
    loaded = pickle.loads(blobs[0])  # under PyG 2 this is a Data without _store
    assert type(loaded) is pyg_data.Data and "_store" not in loaded.__dict__
    env = lmdb.open(str(tmp_path / "old.lmdb"), map_size=1 << 28, subdir=False)
    with env.begin(write=True) as txn:
        for k, blob in enumerate(blobs):
            txn.put(str(k).encode("ascii"), blob)
        txn.put(b"length", pickle.dumps(2))
    env.close()
    ds = open_dataset("oc20-is2re", tmp_path / "old.lmdb")
    for k, g in enumerate(graphs):
        assert_matches(ds[k], g)
        assert ds[k].info["energy"] == float(g.y_relaxed)


def test_shards_and_missing_length_key(tmp_path):
    graphs = load_oc20_reference_graphs()
    folder = tmp_path / "is2re"
    folder.mkdir()
    fairchem_style_lmdb(folder / "data.0000.lmdb", graphs[:5])
    fairchem_style_lmdb(folder / "data.0001.lmdb", graphs[5:], with_length=False)
    ds = open_dataset("oc20-is2re", folder)
    assert len(ds) == 8 and ds.ids[4] == "data.0000.lmdb/4" and ds.ids[5] == "data.0001.lmdb/0"
    assert list(ds.ids)[-1] == "data.0001.lmdb/2"
    assert [ds[k].info["sid"] for k in range(8)] == SIDS and ds[-1].info["id"] == "data.0001.lmdb/2"
    assert len(open_dataset("oc20-is2re", folder, limit=6)) == 6
    n = write_lmdb(tmp_path / "sharded", [ds[k] for k in range(8)], task="is2re", shard_size=3, progress=False)
    assert n == 8 and sorted(p.name for p in (tmp_path / "sharded").iterdir()) == [
        "data.0000.lmdb",
        "data.0001.lmdb",
        "data.0002.lmdb",
    ]
    back = open_dataset("oc20-is2re", tmp_path / "sharded")
    assert [back[k].info["energy"] for k in range(8)] == [float(g.y_relaxed) for g in graphs]


def test_bad_entries_are_named(tmp_path):
    graphs = load_oc20_reference_graphs()[:3]
    no_label = graphs[2].clone()
    del no_label.y_relaxed
    path = fairchem_style_lmdb(tmp_path / "bad.lmdb", [graphs[0], b"garbage", no_label])
    env = lmdb.open(str(path), subdir=False, map_size=1 << 30)
    with env.begin(write=True) as txn:
        txn.put(b"1", b"\x80\x05truncated")
        txn.put(b"length", pickle.dumps(4))  # promises one entry more than stored
    env.close()
    ds = open_dataset("oc20-is2re", path, on_error="skip")
    assert ds[0].info["sid"] == SIDS[0]
    with pytest.raises(StructureError, match=r"bad.lmdb/1: cannot unpickle"):
        ds[1]
    with pytest.raises(StructureError, match=r"bad.lmdb/2 \(sid 1874170\): entry has no 'y_relaxed'"):
        ds[2]
    with pytest.raises(StructureError, match=r"bad.lmdb/3: no such entry"):
        ds[3]


def test_refuses_pickled_code(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    fairchem_style_lmdb(tmp_path / "evil.lmdb", [Exploit()])
    with pytest.raises(StructureError, match="refusing to unpickle"):
        open_dataset("oc20-is2re", tmp_path / "evil.lmdb")[0]
    assert not (tmp_path / "pwned").exists()


def _sids(batch):
    return [a.info["sid"] for a in batch]


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_dataloader_workers_reopen_the_lmdb(tmp_path):
    graphs = load_oc20_reference_graphs()
    ds = open_dataset("oc20-is2re", fairchem_style_lmdb(tmp_path / "data.lmdb", graphs))
    ds[0]  # the parent has the environment open
    clone = pickle.loads(pickle.dumps(ds))
    assert clone[3].info["sid"] == SIDS[3]
    loader = torch.utils.data.DataLoader(
        ds, batch_size=4, num_workers=2, collate_fn=_sids, multiprocessing_context="fork"
    )
    assert [s for batch in loader for s in batch] == SIDS
