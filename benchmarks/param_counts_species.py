"""Parameter counts and checkpoint sizes with per-element tables sized to the species.

What it measures
    For each backbone at its default size (``geognn.build_model(name)``; SchNet also at the
    default ``geognn train`` size), a ``Model`` built three ways: ``species=None`` (one row per Z
    in 0..100, the layout before species and of every older checkpoint), ``species=[14]`` (one
    element, e.g. a silicon potential) and ``species=[1, 6, 7, 8, 9]`` (QM9's elements). Reported:
    trainable parameters, the bytes of ``Model.save`` (float32 checkpoint: config + state_dict),
    and the per-element share (parameters that scale with the number of rows). Counts are exact
    and machine-independent; checkpoint sizes include torch's zip container (a few kB).

Run
    .venv/bin/python benchmarks/param_counts_species.py           # ~20 s on one core
    .venv/bin/python benchmarks/param_counts_species.py --backbones schnet,mace

    Prints a markdown table; writes benchmarks/results/param_counts_species.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine_info  # noqa: E402

from geognn import BACKBONES, build_model  # noqa: E402
from geognn.train.config import DEMO_BACKBONE_KWARGS  # noqa: E402

SETTINGS = {
    "one element (Si)": [14],
    "QM9 (H, C, N, O, F)": [1, 6, 7, 8, 9],
}


def measure(name: str, kwargs: dict, species) -> dict:
    torch.manual_seed(0)
    model = build_model(name, species=species, **kwargs)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pt"
        model.save(path)
        size = os.path.getsize(path)
    return {"parameters": params, "checkpoint_bytes": size, "rows": model.backbone.element_index.num_elements}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", default=",".join(BACKBONES), help="comma-separated names")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS / "param_counts_species.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    cases = [(name, name, {}) for name in args.backbones.split(",")]
    if "schnet" in args.backbones.split(","):
        cases.insert(1, ("schnet (geognn train default)", "schnet", dict(DEMO_BACKBONE_KWARGS)))
    rows = []
    for label, name, kwargs in cases:
        full = measure(name, kwargs, None)
        row = {"backbone": label, "kwargs": kwargs, "all Z <= 100": full}
        for setting, species in SETTINGS.items():
            row[setting] = measure(name, kwargs, species)
        # parameters = fixed + rows * per_row: two settings give both
        one = row["one element (Si)"]
        row["per_element_parameters"] = (full["parameters"] - one["parameters"]) // (full["rows"] - one["rows"])
        rows.append(row)

    header = (
        "| backbone | parameters, all Z ≤ 100 | one element | QM9's 5 elements | per element "
        "| checkpoint, all Z ≤ 100 | one element | QM9's 5 |"
    )
    print(header)
    print("|" + " --- |" * 8)
    for r in rows:
        full, one, qm9 = r["all Z <= 100"], r["one element (Si)"], r["QM9 (H, C, N, O, F)"]
        print(
            f"| {r['backbone']} | {full['parameters']:,} | {one['parameters']:,} "
            f"({one['parameters'] / full['parameters']:.2f}×) | {qm9['parameters']:,} | "
            f"{r['per_element_parameters']:,} | {full['checkpoint_bytes'] / 1e6:.2f} MB | "
            f"{one['checkpoint_bytes'] / 1e6:.2f} MB | {qm9['checkpoint_bytes'] / 1e6:.2f} MB |"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine_info(), "rows": rows}, indent=2) + "\n")
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
