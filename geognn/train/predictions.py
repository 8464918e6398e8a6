"""``test_predictions.csv``: what the trained model predicts for each test structure.

Written by ``geognn train`` at the end of a run (``finish_run`` in loop.py), read by
``geognn plot`` (``geognn.plot.plot_parity``). Columns:

    id                 the structure's id, as in the run's ``split.json`` (``ids`` -> ``test``)
    <name>             the label of target <name> as the model was scored against it: in the
                       training dtype (float32 by default, so a QM9 U0 of -1e4 eV is rounded
                       to ~0.5 meV)
    <name>_pred        the model's prediction
    <name>_std         only for an ensemble (``--ensemble N``): the members' standard deviation

one group per target, in the order of the model's targets. Every value is in its target's own
unit: eV for energies (not meV), eV/atom for per-atom energies, the label's unit otherwise;
``result.json`` -> ``test_predictions`` -> ``units`` names the unit of each target (and
``targets`` lists them with their readouts). Rows follow the order of the test split. The
mean |<name>_pred - <name>| over the rows is ``result.json``'s test MAE of that target. A run
without a test set (``val_data_root``) lists its validation structures, as its test errors are
validation errors; structures left out (``skipped.csv``) have no row.
"""

from __future__ import annotations

import copy
import csv
from pathlib import Path

import torch

from .data import EpochBatches, GraphDataset, Skipped, collate_graphs

#: File name inside the run folder.
FILE_NAME = "test_predictions.csv"
#: Graph key carrying the structure's index through collation (never a real label).
_ROW = "_test_row"


class _Indexed(torch.utils.data.Dataset):
    """``graphs[i]`` with its index ``i`` attached as ``graph[_ROW]`` [1] (on a shallow copy: the
    cached graph stays as it was)."""

    def __init__(self, graphs: GraphDataset):
        self.graphs = graphs

    def __len__(self) -> int:
        return len(self.graphs)

    def __getitem__(self, i: int):
        g = self.graphs[i]
        if isinstance(g, Skipped):
            return g
        g = copy.copy(g)
        g[_ROW] = torch.tensor([i], dtype=torch.long)
        return g


def prediction_columns(model) -> list[str]:
    """``id`` then ``<name>``, ``<name>_pred`` (and ``<name>_std`` for an ensemble) per target."""
    from ..model import Ensemble

    cols = ["id"]
    for name in model.target_names:
        cols += [name, name + "_pred"] + ([name + "_std"] if isinstance(model, Ensemble) else [])
    return cols


@torch.no_grad()
def collect_predictions(model, graphs: GraphDataset, indices, config, d, ids: list[str]) -> list[dict]:
    """One row (dict keyed by :func:`prediction_columns`) per structure of ``indices`` that has a
    graph, in the order of ``indices``; under torchrun every rank computes its shard and all
    ranks get every row. ``ids``: the id of each structure of the dataset (by index)."""
    from .loop import autocast  # loop imports this module

    model.eval()
    cols = prediction_columns(model)
    sampler = EpochBatches(indices, config.batch_size, config.seed, shuffle=False, rank=d.rank, world=d.world)
    loader = torch.utils.data.DataLoader(
        _Indexed(graphs),
        batch_sampler=sampler,
        collate_fn=collate_graphs,
        num_workers=config.num_workers,
        generator=torch.Generator().manual_seed(config.seed),
    )  # not the global RNG
    rows = {}
    for loaded in loader:
        if loaded.batch is None:
            continue
        batch = loaded.batch.to(d.device)
        with autocast(config, d.device):
            out = model(batch, forces=False, stress=False)
        index = batch[_ROW].tolist()
        values = {}
        for name in model.target_names:
            values[name] = batch[name].detach().double().cpu().tolist()
            values[name + "_pred"] = out[name].detach().double().cpu().tolist()
            if name + "_std" in cols:
                values[name + "_std"] = out[name + "_std"].detach().double().cpu().tolist()
        for k, i in enumerate(index):
            rows[i] = {"id": ids[i], **{c: v[k] for c, v in values.items()}}
    if d.world > 1:
        import torch.distributed as dist

        parts = [None] * d.world
        dist.all_gather_object(parts, rows)
        rows = {i: r for part in parts for i, r in part.items()}
    return [rows[i] for i in indices if i in rows]


def write_predictions(path: str | Path, rows: list[dict], columns: list[str]) -> Path:
    """Write ``rows`` as CSV (values at full double precision); returns the path."""
    path = Path(path)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    return path
