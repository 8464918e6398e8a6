"""What subnormal floats in the Gaussian radial basis cost: training steps with and without them.

What it measures
    ``geognn.graph.features.GaussianRBF`` (SchNet, EGNN, FAENet) returns exact zeros where
    ``exp(-gamma (d - mu)^2)`` falls below the dtype's smallest normal number. This script times
    the same models on the same batch with that flush (geognn as it is) and without it (the
    plain formula, patched in for the comparison), interleaved in one run:
        - the share of subnormal entries in the unflushed basis of the batch's edges;
        - one training step (energies, an L1-type loss, backward, AdamW) of each backbone at its
          defaults on 32 QM9 molecules (cutoff 5 Å), float32, --threads torch threads;
        - forward + forces (eval mode), the MD / prediction call.
    Reported: median seconds over --repeats rounds and the ratio unflushed / flushed (above 1:
    the flush is faster). The slow path is the CPU's (Intel cores take microcode assists on
    subnormal operands); other CPUs may show less.

Run
    .venv/bin/python benchmarks/bench_subnormals.py                # schnet, egnn, faenet; ~2 min
    .venv/bin/python benchmarks/bench_subnormals.py --quick        # smoke test
    Results: benchmarks/results/bench_subnormals.json and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from _common import RESULTS, device_info, qm9_graphs, time_interleaved, write_results

import geognn
from geognn.graph import features

CUTOFF = 5.0


def unflushed_forward(self, distance: torch.Tensor) -> torch.Tensor:
    """``GaussianRBF.forward`` without the flush: the plain formula, subnormals included."""
    return torch.exp(-self.gamma * (distance.unsqueeze(-1) - self.centres) ** 2)


def subnormal_share(batch) -> float:
    """Share of subnormal float32 entries in the unflushed default basis (50 Gaussians, 0-5 Å)."""
    rbf = features.GaussianRBF(0.0, CUTOFF, 50)
    d = geognn.graph.build.edge_vectors(batch).norm(dim=-1).float()
    values = unflushed_forward(rbf, d)
    return float(((values > 0) & (values < torch.finfo(values.dtype).tiny)).float().mean())


def calls(name: str, batch, flush: bool) -> dict:
    """One training step and one forward + forces call of a fresh default model; ``flush`` picks
    GaussianRBF's forward for every call of this model."""
    torch.manual_seed(0)
    model = geognn.build_model(name, cutoff=CUTOFF)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)
    forward = features.GaussianRBF.forward if flush else unflushed_forward
    original = features.GaussianRBF.forward

    def patched(fn):  # both sides go through this wrapper, so its overhead cancels in the ratio
        def call():
            features.GaussianRBF.forward = forward
            try:
                return fn()
            finally:
                features.GaussianRBF.forward = original

        return call

    def train_step():
        model.train()
        loss = model(batch, forces=False)["energy"].abs().mean()  # any loss: the step's cost is the same
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

    def forward_forces():
        model.eval()
        out = model(batch, forces=True)
        return out["forces"]

    return {"train step": patched(train_step), "forward+forces": patched(forward_forces)}


def markdown(payload: dict) -> str:
    lines = [
        f"subnormal share of the unflushed basis: {payload['subnormal_share']:.3f}",
        "",
        "| backbone | call | flushed ms | unflushed ms | unflushed / flushed |",
        "|---|---|---:|---:|---:|",
    ]
    for key, row in payload["rows"].items():
        lines.append(
            f"| {row['backbone']} | {row['call']} | {1e3 * row['flushed_s']:.0f} | {1e3 * row['unflushed_s']:.0f} | "
            f"**{row['ratio']:.2f}** |"
        )
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", default="schnet,egnn,faenet", help="(default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (default: 7)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds (default: 2)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 4 molecules, schnet, 2 rounds")
    parser.add_argument("--out", default=None, help="results JSON (default: benchmarks/results/...)")
    args = parser.parse_args(argv)
    n_molecules = 32
    names = [n.strip() for n in args.backbones.split(",") if n.strip()]
    if args.quick:
        n_molecules, names, args.warmup, args.repeats = 4, ["schnet"], 1, 2
    torch.set_num_threads(args.threads)
    batch = geognn.collate(qm9_graphs(n_molecules, CUTOFF))
    fns = {}
    for name in names:
        for flush in (True, False):
            for call, fn in calls(name, batch, flush).items():
                fns[f"{name}|{call}|{'flushed' if flush else 'unflushed'}"] = fn
    times = time_interleaved(fns, torch.device("cpu"), args.warmup, args.repeats)
    rows = {}
    for name in names:
        for call in ("train step", "forward+forces"):
            flushed = statistics.median(times[f"{name}|{call}|flushed"])
            unflushed = statistics.median(times[f"{name}|{call}|unflushed"])
            rows[f"{name} {call}"] = {
                "backbone": name,
                "call": call,
                "flushed_s": flushed,
                "unflushed_s": unflushed,
                "ratio": unflushed / flushed,
            }
    payload = {
        "benchmark": "bench_subnormals",
        "quick": args.quick,
        "argv": sys.argv[1:] if argv is None else list(argv),
        "machine": device_info(torch.device("cpu")),
        "n_molecules": n_molecules,
        "n_edges": int(batch.edge_index.shape[1]),
        "subnormal_share": subnormal_share(batch),
        "rows": rows,
    }
    print(markdown(payload))
    out = (
        Path(args.out)
        if args.out
        else RESULTS / ("bench_subnormals_quick.json" if args.quick else "bench_subnormals.json")
    )
    print("results:", write_results(payload, out))
    return payload


if __name__ == "__main__":
    main()
