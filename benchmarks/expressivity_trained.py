"""The geometric-gnn-dojo's trained k-chain experiment for every geognn backbone.

What it measures
    For each backbone (``geognn.expressivity.training.TRAIN_SETTINGS``, plus EGNN with fixed
    coordinates), layer counts floor(k/2) .. k+2 and --seeds fresh initialisations: a classifier
    (backbone -> invariant graph readout -> MLP) trained for --epochs epochs to label the dojo's
    two k-chains (S = 0, U = 1); the best accuracy reached, then mean ± std over seeds. Protocol
    and settings: the docstring of ``geognn/expressivity/training.py`` (the dojo's: batch size 1,
    Adam 1e-4, ReduceLROnPlateau, 100 epochs). Theory: an equivariant message-passing model needs
    floor(k/2)+1 layers; invariant ones never separate the chains. The dojo reports GVP-GNN at
    k = 4: 50 % with 2 layers, 100 % with 3 to 6.

Run
    .venv/bin/python benchmarks/expressivity_trained.py            # k = 4, 10 seeds, 100 epochs
    (the same as ``geognn expressivity --train --out DIR``). Results: printed, and
    benchmarks/results/expressivity_trained_k4.json (--out), with the machine and git state.
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import RESULTS, machine_info, write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--backbones", default="all", help="comma-separated names, or all")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="JSON path (default: results/expressivity_trained_k{k}.json)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from pathlib import Path

    from geognn.expressivity.training import (
        TRAIN_SETTINGS,
        TRAIN_VARIANTS,
        format_table,
        k_chain_experiment,
        results_json,
    )

    names = (
        list(TRAIN_SETTINGS)[:3] + list(TRAIN_VARIANTS) + list(TRAIN_SETTINGS)[3:]
        if args.backbones == "all"
        else [n.strip() for n in args.backbones.split(",")]
    )
    out = Path(RESULTS / f"expressivity_trained_k{args.k}.json" if args.out is None else args.out)
    start = time.perf_counter()
    results = []
    for name in names:  # one backbone at a time, the file rewritten after each (a long run keeps its part)
        results += k_chain_experiment([name], k=args.k, seeds=args.seeds, epochs=args.epochs)
        payload = results_json(results, args.k, args.seeds, args.epochs)
        payload.update(
            seconds=round(time.perf_counter() - start, 1),
            threads=args.threads,
            machine=machine_info(),
            complete=len(results) == len(names),
            table_markdown=format_table(results, args.k),
        )
        path = write_results(payload, out)
    print(payload["table_markdown"], end="")
    print("wrote", path, f"({payload['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
