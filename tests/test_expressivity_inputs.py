"""Expressivity on anyone's graphs: the dojo's layouts through every entry point, and a noise
floor that knows the input's precision.

- The geometric-gnn-dojo builds its hard pairs as PyG ``Data(atoms=..., edge_index=..., pos=...)``
  in float32 (torch's default), with no cell, shifts or natoms; others use ``z`` or a one-hot
  ``x``. Each layout, and ``ase.Atoms`` with a cutoff, must give the same answers as geognn's own
  graphs in every entry point (gwl_test, separation, distinguishes, identifies_orientation,
  layers_needed, isometric_copy, ``geognn expressivity --pair``), and anything else a one-line
  error naming what is missing.
- A float32 graph and its rotated, translated, permuted float32 copy (made as a user would: in
  float32 arithmetic) must never be "separated", for any backbone; pairs that theory separates
  must still be. Before the copies that set the threshold were rounded to the input's dtype,
  7 of 9 backbones "separated" such copies; a planted defect (no rounding) shows the check
  catches that.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from backbone_configs import SMALL
from scipy.spatial.transform import Rotation
from torch_geometric.data import Data

from geognn import BACKBONES
from geognn.cli import main
from geognn.expressivity import (
    as_graph,
    distinguishes,
    gwl_test,
    identifies_orientation,
    isometric_copy,
    layers_needed,
    separation,
)
from geognn.expressivity import models as models_module
from geognn.expressivity.pairs import k_chain_pair, rotational_symmetry_pair, two_body_degenerate_pair

pytestmark = pytest.mark.usefixtures("one_thread")


def dojo_layout(graph, labels: str = "atoms", dtype=torch.float32) -> Data:
    """A geognn graph rewritten the dojo's way: pos (float32), edge_index, labels, nothing else."""
    z = graph.z
    kinds = {int(v): k for k, v in enumerate(sorted(set(z.tolist())))}
    category = torch.tensor([kinds[int(v)] for v in z])
    data = Data(pos=graph.pos.to(dtype), edge_index=graph.edge_index.clone(), y=torch.tensor([0]))
    if labels == "atoms":
        data.atoms = category
    elif labels == "x":
        data.x = torch.nn.functional.one_hot(category, num_classes=len(kinds)).float()
    else:
        data.z = z.clone()
    return data


def float32_copy(graph: Data, seed: int) -> Data:
    """A rotated, translated, permuted copy computed in float32, as a user would make it."""
    rng = np.random.default_rng(seed)
    rotation = torch.tensor(Rotation.random(random_state=seed).as_matrix(), dtype=torch.float32)
    return isometric_copy(
        graph, rotation, torch.tensor(rng.normal(size=3) * 3, dtype=torch.float32), rng.permutation(graph.pos.shape[0])
    )


def _small(name):
    return {k: v for k, v in SMALL.get(name, {}).items() if k != "num_layers"}


# --------------------------------------------------------------------------- one input path
@pytest.mark.parametrize("labels", ["atoms", "x", "z"])
def test_dojo_layouts_become_geognn_graphs(labels):
    pair = two_body_degenerate_pair()  # labels 6 (centre) and 1 (neighbours)
    graph = as_graph(dojo_layout(pair.g1, labels), "g1")
    assert graph.pos.dtype == torch.float32  # the input's precision is kept
    assert graph.cell.shape == (1, 3, 3) and not graph.pbc.any() and graph.natoms.tolist() == [5]
    assert graph.edge_shift.shape == (8, 3) and "y" not in graph
    # categories: 1 (H) -> label 0 -> z 1; 6 (C) -> label 1 -> z 2; z is kept as it is
    assert graph.z.tolist() == ([6, 1, 1, 1, 1] if labels == "z" else [2, 1, 1, 1, 1])


@pytest.mark.parametrize("labels", ["atoms", "x", "z"])
def test_every_entry_point_gives_the_same_answer_on_dojo_layouts(labels):
    chain = k_chain_pair(2)
    d1, d2 = dojo_layout(chain.g1, labels), dojo_layout(chain.g2, labels)
    for invariant in (False, True):
        assert (
            gwl_test(d1, d2, invariant=invariant).iterations
            == gwl_test(chain.g1, chain.g2, invariant=invariant).iterations
        )
    settings = dict(hidden_channels=8)
    assert not distinguishes("painn", d1, d2, num_layers=1, seeds=1, **settings)
    assert distinguishes("painn", d1, d2, num_layers=2, seeds=1, **settings)
    assert separation("painn", d1, d2, 2, seeds=1, **settings).margin > 1
    assert layers_needed("painn", (d1, d2), max_layers=3, seeds=1, **settings) == 2
    assert isometric_copy(d1, permutation=[3, 2, 1, 0]).z.tolist() == as_graph(d1).z.flip(0).tolist()
    if labels != "atoms":
        return  # the label layouts are the same path from here on (as_graph); one is enough
    star = rotational_symmetry_pair(2)
    s1, s2 = dojo_layout(star.g1, labels), dojo_layout(star.g2, labels)
    e3nn = dict(hidden_channels=4, radial_hidden=(8,), max_ell=2)
    assert identifies_orientation("nequip", s1, s2, num_layers=1, seeds=1, **e3nn)
    assert not identifies_orientation("painn", s1, s2, num_layers=1, seeds=1, **settings)


BENT_H = [0.96 * np.cos(np.deg2rad(104.5)), 0.96 * np.sin(np.deg2rad(104.5)), 0.0]  # O-H 0.96 Å, H-H 1.52 Å


def test_ase_atoms_with_a_cutoff_and_periodic_data():
    bent = Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], BENT_H])
    linear = Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.96, 0, 0]])
    # distances O-H equal, the angle differs: one GWL iteration; IGWL_(2) never
    assert gwl_test(bent, linear, graph_cutoff=1.2).iterations == 1
    assert gwl_test(bent, linear, invariant=True, body_order=2, graph_cutoff=1.2).iterations is None
    assert distinguishes("dimenetpp", bent, linear, 1, seeds=1, graph_cutoff=1.2, **_small("dimenetpp"))
    assert not distinguishes("schnet", bent, linear, 2, seeds=1, graph_cutoff=1.2, **_small("schnet"))
    with pytest.raises(ValueError, match="g1: an Atoms has no edges of its own: pass a cutoff"):
        gwl_test(bent, linear)
    # a periodic PyG Data with cell, pbc and edge_shift (in the dojo's float32): a crystal and its
    # own float32-rotated copy are the same for GWL and for a backbone
    from ase.build import bulk

    from geognn.graph.build import build_graph

    crystal = build_graph(bulk("NaCl", "rocksalt", a=5.64), 3.4, dtype=torch.float32)
    data = Data(
        pos=crystal.pos,
        edge_index=crystal.edge_index,
        z=crystal.z,
        cell=crystal.cell[0],
        pbc=crystal.pbc[0],
        edge_shift=crystal.edge_shift,
    )
    copy = float32_copy(data, 1)
    assert not gwl_test(data, copy).distinguished
    assert not distinguishes("painn", data, copy, 1, seeds=1, hidden_channels=8)


def test_anything_else_is_a_clear_error_saying_what_is_missing():
    chain = k_chain_pair(2)
    good = dojo_layout(chain.g1)
    cases = [
        ({"pos": good.pos}, "g1: got a dict; expected a torch_geometric Data"),
        (good.pos, "g1: got a Tensor \\(no pos and no edge_index\\)"),
        (Data(pos=good.pos, edge_index=good.edge_index), "g1: no node labels: expected z .*atoms .*one-hot x"),
        (Data(pos=good.pos, atoms=good.atoms), "g1: no edge_index"),
        (Data(pos=good.pos, edge_index=good.edge_index, x=torch.randn(4, 3)), "g1: x must be one-hot node labels"),
        (
            Data(pos=good.pos, edge_index=good.edge_index, z=torch.zeros(4, dtype=torch.long)),
            "g1: z holds 0: atomic numbers are >= 1",
        ),
        (
            Data(pos=good.pos, edge_index=good.edge_index, atoms=good.atoms, cell=torch.eye(3) * 5),
            "g1: periodic .* but no edge_shift",
        ),
        (
            Data(pos=good.pos[:, :2], edge_index=good.edge_index, atoms=good.atoms),
            "g1: pos must be a floating \\[N, 3\\]",
        ),
        (
            Data(pos=good.pos, edge_index=good.edge_index + 10, atoms=good.atoms),
            "g1: edge_index refers to nodes outside",
        ),
    ]
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            gwl_test(bad, good)
        with pytest.raises(ValueError, match=message):
            distinguishes("schnet", bad, good, 1, seeds=1)


# --------------------------------------------------------------------------- noise floor
@pytest.mark.parametrize("name", list(BACKBONES))
def test_float32_isometric_copies_are_never_separated(name):
    """A float32 dojo-layout chain vs its float32 rotated/translated/permuted copy: no backbone may
    separate them (margins measured 1e-3 to 1e-2 with the rounded copies, for 2 layers)."""
    from geognn.expressivity.report import PROBE_SETTINGS

    g = dojo_layout(k_chain_pair(3).g1)
    copy = float32_copy(g, 0)
    result = separation(name, g, copy, 2, seeds=2, **PROBE_SETTINGS[name])
    assert not result.distinguished, result.margins
    assert result.margin < 0.2, result.margins  # well below 1: not a close call


def test_float32_safeguards_each_prevent_false_separation(monkeypatch):
    """The two safeguards against float32 round-off, planted away one at a time.

    Without either (copies made in float64 from the rounded input, raw gaps: the bug of issue 14)
    a float32 copy is "separated"; either one alone prevents it: rounded copies give a float32
    noise floor, and the projection removes the round-off's first-order effect from every gap."""
    g = dojo_layout(k_chain_pair(3).g1)
    copy = float32_copy(g, 0)
    settings = dict(hidden_channels=8)
    assert not distinguishes("painn", g, copy, 2, seeds=2, **settings)
    real_projection = models_module.projected_gaps

    def raw_gaps(model, g1, g2, copies1, copies2, seed):  # the readout without the projection
        emb = models_module.graph_embeddings(model, models_module.collate([g1, g2] + copies1 + copies2))
        noise = [float((emb[0] - emb[2 + k]).norm()) for k in range(len(copies1))]
        noise += [float((emb[1] - emb[2 + len(copies1) + k]).norm()) for k in range(len(copies2))]
        return float((emb[0] - emb[1]).norm()), noise, float(emb[0].norm())

    monkeypatch.setattr(models_module, "projected_gaps", raw_gaps)
    assert not distinguishes("painn", g, copy, 2, seeds=2, **settings)  # rounded copies alone
    monkeypatch.setattr(models_module, "_rounded_to", lambda data, dtype: data)
    assert distinguishes("painn", g, copy, 2, seeds=2, **settings)  # neither: falsely separated
    monkeypatch.setattr(models_module, "projected_gaps", real_projection)
    assert not distinguishes("painn", g, copy, 2, seeds=2, **settings)  # the projection alone


def test_projection_removes_first_order_round_off_only():
    """Projected differences (hand-checked): an isometric float32 copy leaves second-order
    residue (measured 1e-14 to 1e-12 of an embedding of norm ~1e2), the 6-chain's two graphs keep
    a gap 1e2 or more times larger at 4 layers and none at 3."""
    import numpy as np

    from geognn.expressivity.models import CUTOFF_MARGIN, _as_float64, _copies, build_backbone, projected_gaps
    from geognn.graph.build import edge_vectors

    pair = k_chain_pair(6)
    g1, g2 = (_as_float64(as_graph(dojo_layout(g), "g")) for g in (pair.g1, pair.g2))
    cutoff = CUTOFF_MARGIN * float(edge_vectors(g1).norm(dim=-1).max())
    for layers, separated in ((4, True), (3, False)):
        model = build_backbone("painn", layers, cutoff, 0, dict(hidden_channels=16))
        rng = np.random.default_rng(0)
        c1, _ = _copies(g1, torch.float32, rng, True, True)
        c2, _ = _copies(g2, torch.float32, rng, True, True)
        gap, noise, scale = projected_gaps(model, g1, g2, c1, c2, 0)
        assert max(noise) < 1e-10 * scale, noise
        if separated:
            assert gap > 100 * max(noise), (gap, noise)
        else:
            assert gap <= 1e-12 * scale, gap


@pytest.mark.parametrize(
    "name,k", [("painn", 4), ("painn", 8), ("egnn", 4), ("egnn", 8), ("dimenetpp", None), ("mace", 3), ("nequip", 6)]
)
def test_float32_pairs_that_theory_separates_are_still_separated(name, k):
    """Dojo-layout float32: k-chains by equivariant backbones at exactly floor(k/2)+1 layers (not
    one fewer), the 2-body pair by angle-aware DimeNet++ at 1 layer.

    Deep chains were where float32 ended before the projection (painn on the 8-chain: margin
    0.008; the round-off response swamped a gap of ~1e-10). Now, report settings, 2 seeds, the
    margins at floor(k/2)+1 layers are far above the asserted 1.5 (painn 8-chain ~20-200)."""
    from geognn.expressivity.report import PROBE_SETTINGS

    settings = dict(PROBE_SETTINGS[name])
    if name == "mace":
        settings.update(hidden_channels=4, max_ell=1, hidden_max_ell=1)
    if name == "nequip":
        settings.update(hidden_channels=4, max_ell=1)
    if k is None:
        pair, depth = two_body_degenerate_pair(), 1
    else:
        pair, depth = k_chain_pair(k), k // 2 + 1
    g1, g2 = dojo_layout(pair.g1), dojo_layout(pair.g2)
    assert separation(name, g1, g2, depth, seeds=2, **settings).margin > 1.5
    if depth > 1:
        assert not distinguishes(name, g1, g2, depth - 1, seeds=2, **settings)


# --------------------------------------------------------------------------- CLI
def test_cli_runs_a_users_pair_from_files(tmp_path, capsys):
    chain = k_chain_pair(2)
    torch.save(dojo_layout(chain.g1), tmp_path / "u.pt")
    torch.save(dojo_layout(chain.g2), tmp_path / "s.pt")
    out = tmp_path / "report"
    assert (
        main(
            [
                "expressivity",
                "--backbones",
                "schnet,painn",
                "--pair",
                str(tmp_path / "u.pt"),
                str(tmp_path / "s.pt"),
                "--max-layers",
                "2",
                "--seeds",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    markdown = (out / "report.md").read_text()
    assert "| u.pt vs s.pt | 2 (2) | 2 (2) | 2 (2) | ✗ (✗) | ✗ (✗) | ✗ (✗) | ✗ (✗) | ✗ (✗) | 2 (2) |" in markdown
    ase_pair = [tmp_path / "bent.xyz", tmp_path / "linear.xyz"]
    Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], BENT_H]).write(ase_pair[0])
    Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.96, 0, 0]]).write(ase_pair[1])
    assert (
        main(
            [
                "expressivity",
                "--backbones",
                "schnet",
                "--pair",
                *map(str, ase_pair),
                "--max-layers",
                "1",
                "--seeds",
                "1",
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "needs --graph-cutoff" in capsys.readouterr().err
    assert (
        main(
            [
                "expressivity",
                "--backbones",
                "schnet",
                "--pair",
                *map(str, ase_pair),
                "--graph-cutoff",
                "1.2",
                "--max-layers",
                "1",
                "--seeds",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    torch.save({"pos": 1}, tmp_path / "bad.pt")
    assert main(["expressivity", "--pair", str(tmp_path / "bad.pt"), str(tmp_path / "s.pt"), "--out", str(out)]) == 2
    assert "bad.pt: got a dict" in capsys.readouterr().err


def test_cli_float32_library_pairs_keep_the_theoretical_answers(tmp_path):
    """``--dtype float32`` rounds the library's pairs as the dojo stores them; EGNN (coordinate
    updates) still needs exactly 3 layers for the 4-chain and distance-only SchNet never separates it."""
    assert (
        main(
            [
                "expressivity",
                "--backbones",
                "schnet,egnn",
                "--pairs",
                "4-chain",
                "--dtype",
                "float32",
                "--max-layers",
                "3",
                "--seeds",
                "2",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    markdown = (tmp_path / "report.md").read_text()
    assert "| 4-chain | 3 (3) | 3 (3) | 3 (3) | ✗ (✗) | ✗ (✗) | ✗ (✗) | ✗ (✗) | ✗ (✗) | 3 (3) |" in markdown
