"""QM9 U0 accuracy of every geognn backbone after the same training time, with default hyperparameters.

What it does
    For each backbone in geognn.BACKBONES (or --backbones), trains with geognn's own trainer,
    ``geognn.train.loop.train(TrainConfig(backbone=name, backbone_kwargs={}, time_limit=T, ...))``:
    the backbone's constructor DEFAULTS (no per-backbone tuning; ``{}`` rather than ``None`` so
    that SchNet, too, gets its own defaults instead of the trainer's smaller demo SchNet;
    --trainer-defaults passes ``None``), the trainer's defaults for everything else (AdamW, lr 1e-3,
    batch 32, cutoff 5 Å, energy-only loss on the residual after the per-element reference
    energies, ReduceLROnPlateau), the same seed (0) and hence the same random 80/10/10 split for
    every backbone (checked: the split.json files must be identical), on the QM9 subset shipped with
    the package (TrainConfig's default data_root; --limit N uses its first N molecules).
    Training stops once T seconds of training are spent, mid-epoch if need be (the trainer checks
    the budget before every batch, then validates); the table gives the real time, validation
    included.
    The model kept is the best on validation; reported: test MAE of U0 (meV), the test MAE of
    the composition baseline (per-element reference energies fitted on the training set, meV),
    their ratio (baseline / model: how many times better than composition alone), epochs done,
    training time (s, including the per-epoch validation), and the parameter count.
    A backbone that cannot be built (placeholder raising NotImplementedError) or whose training
    fails is reported as unavailable/failed and skipped.

Run
    .venv/bin/python benchmarks/accuracy_qm9.py                          # all backbones, 120 s each
    .venv/bin/python benchmarks/accuracy_qm9.py --time-limit 10 --limit 300 --backbones schnet
    .venv/bin/python benchmarks/accuracy_qm9.py --backbones nequip,egnn --update   # re-measure rows
    .venv/bin/python benchmarks/accuracy_qm9.py --update --variant 'ponita-cpu=ponita:{"num_ori": 8}'
    Results: benchmarks/results/accuracy_qm9.json and accuracy_qm9.md (with --out-prefix, other
    names); training runs (checkpoints, metrics.csv) under runs/accuracy_qm9/<backbone>/.
    --update replaces only the rows of the backbones run and keeps the others (same budget, seed and
    data required); every row records the date, commit and load average it was measured with.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

if "--progress" not in sys.argv:
    os.environ.setdefault("TQDM_DISABLE", "1")  # the trainer's graph-building bar (read when tqdm is imported)

import torch
from _common import HERE, RESULTS, machine_info


def short_reason(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {msg}"[:200]


#: Backbones without rotation symmetry of their own run as their paper does: FAENet with
#: stochastic frame averaging (one frame per structure in training, all frames at evaluation).
FRAME_AVERAGING = {"faenet": "stochastic"}


def run_one(name: str, args, runs: Path, variant: tuple[str, dict] | None = None) -> dict:
    """Train backbone ``name`` (defaults) or, with ``variant = (label, kwargs)``, a labelled
    non-default size of it; the row is keyed by the label."""
    import geognn
    from geognn.train.config import TrainConfig
    from geognn.train.loop import train

    kwargs = None if args.trainer_defaults else {}
    label = name
    if variant is not None:
        label, kwargs = variant
    config = TrainConfig(
        backbone=name,
        backbone_kwargs=kwargs,
        time_limit=args.time_limit,
        limit=args.limit,
        seed=args.seed,
        threads=args.threads,
        out=str(runs / label),
        frame_averaging=FRAME_AVERAGING.get(name),
    )
    try:  # cheap availability check before loading data
        params = sum(
            p.numel()
            for p in geognn.build_model(
                name, cutoff=config.cutoff, frame_averaging=config.frame_averaging, **config.resolved_backbone_kwargs()
            ).parameters()
        )
    except Exception as exc:  # noqa: BLE001
        return {"backbone": label, "status": f"unavailable: {short_reason(exc)}"}
    t0 = time.perf_counter()
    try:
        result = train(config, resume=False, progress=args.progress)
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc(limit=5)
        return {"backbone": label, "status": f"failed: {short_reason(exc)}", "parameters": params}
    wall = time.perf_counter() - t0
    rows = list(csv.DictReader((runs / label / "metrics.csv").open()))
    mae, base = result.test_mae * 1e3, result.baseline_test_mae * 1e3
    return {
        "backbone": label,
        "status": "ok",
        "test_mae_meV": mae,
        "baseline_test_mae_meV": base,
        "ratio_baseline_over_model": base / mae if mae > 0 else math.inf,
        "best_val_mae_meV": result.val_mae * 1e3,
        "epochs": len(rows),
        "train_time_s": float(rows[-1]["elapsed_s"]) if rows else 0.0,
        "wall_s": wall,
        "parameters": params,
        "backbone_kwargs": config.resolved_backbone_kwargs(),
        "split_file": str(runs / label / "split.json"),
        "run_dir": str(runs / label),
    }


def merge_into_previous(results: list[dict], path: Path, args, order: list[str]) -> list[dict]:
    """The rows of ``path``'s results with those of ``results`` replacing the same backbones.

    Refuses to mix runs of a different budget, seed or molecule limit.
    """
    if not path.exists():
        return results
    old = json.loads(path.read_text())
    for key, value in (("time_limit_s", args.time_limit), ("seed", args.seed), ("limit", args.limit)):
        if old.get(key) != value:
            raise SystemExit(f"--update: {path} has {key}={old.get(key)!r}, this run {value!r}; not merging")
    new = {r["backbone"]: r for r in results}
    machine = old.get("machine", {})
    for r in old["results"]:  # rows written before rows recorded their own run
        r.setdefault(
            "measured",
            {
                "date": machine.get("date", "?"),
                "commit": machine.get("git", {}).get("commit", "?"),
                "modified_files": machine.get("git", {}).get("geognn_changed_files", []),
            },
        )
    merged = {r["backbone"]: r for r in old["results"]}
    merged.update(new)
    return sorted(merged.values(), key=lambda r: order.index(r["backbone"]) if r["backbone"] in order else len(order))


def variants_note(results: list[dict], defaults: list[str]) -> str:
    """Markdown lines naming the keywords of the rows that are not a backbone at its defaults."""
    lines = [
        f"- `{r['backbone']}`: `{json.dumps(r.get('backbone_kwargs', {}))}`"
        for r in results
        if r["backbone"] not in defaults
    ]
    return "\nRows not at the defaults (constructor keywords):\n" + "\n".join(lines) + "\n" if lines else ""


def measured_note(results: list[dict]) -> str:
    """'; rows measured at other commits: ...' when --update merged rows of several runs."""
    by_commit: dict[str, list[str]] = {}
    for r in results:
        m = r.get("measured")
        if m:
            by_commit.setdefault(f"{m['commit']} ({m['date'][:16]})", []).append(r["backbone"])
    if len(by_commit) <= 1:
        return ""
    return "; rows by commit: " + "; ".join(f"{', '.join(v)} at {k}" for k, v in by_commit.items())


def table(results: list[dict], markdown: bool) -> str:
    head = ["backbone", "test MAE U0 (meV)", "baseline MAE (meV)", "baseline/model", "epochs", "time (s)", "parameters"]
    lines = []
    rows = []
    for r in results:
        if r["status"] == "ok":
            rows.append(
                [
                    r["backbone"],
                    f"{r['test_mae_meV']:.1f}",
                    f"{r['baseline_test_mae_meV']:.1f}",
                    f"{r['ratio_baseline_over_model']:.2f}",
                    str(r["epochs"]),
                    f"{r['train_time_s']:.0f}",
                    f"{r['parameters']:,}",
                ]
            )
        else:
            rows.append([r["backbone"], r["status"]] + [""] * 4 + [f"{r['parameters']:,}" if "parameters" in r else ""])
    if markdown:
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    else:
        ok_rows = [row for row in rows if not row[1].startswith(("unavailable", "failed"))]
        widths = [
            max([len(head[k])] + [len(row[k]) for row in (rows if k == 0 else ok_rows)]) for k in range(len(head))
        ]
        lines.append("  ".join(h.rjust(w) if k else h.ljust(w) for k, (h, w) in enumerate(zip(head, widths))))
        for row in rows:
            if row[1].startswith(("unavailable", "failed")):
                lines.append(row[0].ljust(widths[0]) + "  " + row[1])
            else:
                lines.append("  ".join(c.rjust(w) if k else c.ljust(w) for k, (c, w) in enumerate(zip(row, widths))))
    return "\n".join(lines)


def main(argv=None) -> dict:
    import geognn
    from geognn.train.config import DEFAULT_QM9

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbones", default=None, help="comma-separated names (default: all of geognn.BACKBONES)")
    ap.add_argument("--time-limit", type=float, default=120.0, help="seconds of training per backbone (default 120)")
    ap.add_argument("--limit", type=int, default=None, help="use the first N molecules (default: all)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0, help="seed of split, initialisation and batches (same for all)")
    ap.add_argument(
        "--trainer-defaults",
        action="store_true",
        help="TrainConfig backbone_kwargs=None (SchNet then gets the trainer's demo size)",
    )
    ap.add_argument("--runs", type=Path, default=HERE.parent / "runs" / "accuracy_qm9", help="run folders")
    ap.add_argument("--out-prefix", type=Path, default=RESULTS / "accuracy_qm9", help="writes PREFIX.json, PREFIX.md")
    ap.add_argument("--progress", action="store_true", help="show the trainer's per-epoch progress")
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="LABEL=NAME:JSON",
        help="also train backbone NAME with constructor keywords JSON, as a row named LABEL "
        "(a documented non-default size; the default rows stay the defaults)",
    )
    ap.add_argument(
        "--update",
        action="store_true",
        help="merge into the existing PREFIX.json: replace the rows of these backbones, keep the rest",
    )
    args = ap.parse_args(argv)

    if args.backbones:
        names = [n.strip() for n in args.backbones.split(",") if n.strip()]
    else:  # all of them, unless only --variant rows were asked for
        names = [] if args.variant else list(geognn.BACKBONES)
    bad = [n for n in names if n not in geognn.BACKBONES]
    if bad:
        raise SystemExit(f"unknown backbone(s) {bad}; choose from {', '.join(geognn.BACKBONES)}")
    variants = []
    for spec in args.variant:
        label, _, rest = spec.partition("=")
        name, _, kw = rest.partition(":")
        if name not in geognn.BACKBONES or not label:
            raise SystemExit(f"--variant {spec!r}: expected LABEL=NAME:JSON with NAME in {', '.join(geognn.BACKBONES)}")
        variants.append((name, (label, json.loads(kw or "{}"))))
    info = machine_info()
    info["torch_threads"] = args.threads or torch.get_num_threads()
    print(
        f"accuracy_qm9: {', '.join(names + [v[1][0] for v in variants])}; {args.time_limit:.0f} s of training each, default hyperparameters, "
        f"seed {args.seed}, data {Path(DEFAULT_QM9).name}{f' (first {args.limit})' if args.limit else ''}; "
        f"{info['cpu']}, {info['cores_logical']} cores, {info['torch_threads']} torch threads, load average "
        f"{info['load_average_1_5_15'][0]:.2f}"
    )
    t0 = time.perf_counter()
    results = []
    for name, variant in [(n, None) for n in names] + variants:
        load = os.getloadavg()[0]
        r = run_one(name, args, args.runs, variant)
        r["measured"] = {
            "date": info["date"],
            "commit": info["git"]["commit"],
            "modified_files": info["git"]["geognn_changed_files"],
            "load_average_before": load,
        }
        results.append(r)
        if r["status"] == "ok":
            print(
                f"  {r['backbone']}: test MAE {r['test_mae_meV']:.1f} meV (baseline {r['baseline_test_mae_meV']:.1f}), "
                f"{r['epochs']} epochs in {r['train_time_s']:.0f} s",
                flush=True,
            )
        else:
            print(f"  {r['backbone']}: {r['status']}", flush=True)
    if args.update:
        results = merge_into_previous(results, Path(f"{args.out_prefix}.json"), args, list(geognn.BACKBONES))
    splits = {
        r["backbone"]: Path(r["split_file"]).read_text()
        for r in results
        if r["status"] == "ok" and Path(r["split_file"]).exists()
    }
    same_split = len(set(splits.values())) <= 1
    if not same_split:
        print("WARNING: the backbones were trained on different splits")
    n_mol = None
    if splits:
        split = json.loads(next(iter(splits.values())))
        n_mol = {k: len(split[k]) for k in ("train", "val", "test")}  # split.json also holds ids and seed
    print(
        f"\nQM9 U0, {args.time_limit:.0f} s budget each; split train/val/test = "
        f"{'/'.join(str(n_mol[k]) for k in ('train', 'val', 'test')) if n_mol else '?'} molecules"
        f"{' (same for all)' if same_split and splits else ''}; baseline = per-element reference energies "
        f"(linear fit on composition); baseline/model = how many times lower the model's error is"
    )
    print(table(results, markdown=False))
    payload = {
        "benchmark": "accuracy_qm9",
        "machine": info,
        "time_limit_s": args.time_limit,
        "limit": args.limit,
        "seed": args.seed,
        "data": str(DEFAULT_QM9),
        "split_sizes": n_mol,
        "same_split_for_all": same_split,
        "backbone_kwargs": "None (trainer defaults)" if args.trainer_defaults else "{} (constructor defaults)",
        "results": results,
        "wall_s": time.perf_counter() - t0,
    }
    prefix = args.out_prefix
    prefix.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{prefix}.json").write_text(json.dumps(payload, indent=2) + "\n")
    md = (
        f"# QM9 U0 after {args.time_limit:.0f} s of training per backbone\n\n"
        f"Default hyperparameters of each backbone, geognn's trainer defaults, seed {args.seed}, same split "
        f"(train/val/test {'/'.join(str(n_mol[k]) for k in ('train', 'val', 'test')) if n_mol else '?'} molecules "
        f"of {Path(DEFAULT_QM9).name}{f', first {args.limit}' if args.limit else ''}). "
        f"{info['cpu']}, {info['cores_logical']} cores, {info['torch_threads']} torch threads, {info['date']}, "
        f"geognn commit {info['git']['commit']}"
        f"{' (modified files: ' + ', '.join(info['git']['geognn_changed_files']) + ')' if info['git']['geognn_changed_files'] else ''}"
        f"{measured_note(results)}.\n"
        f"Baseline: per-element reference energies fitted on the training set (linear in composition). "
        f"Time: training plus per-epoch validation; the budget can end an epoch midway.\n\n"
        + table(results, markdown=True)
        + "\n"
        + variants_note(results, list(geognn.BACKBONES))
    )
    Path(f"{prefix}.md").write_text(md)
    print(f"wrote {prefix}.json and {prefix}.md ({payload['wall_s']:.0f} s)")
    return payload


if __name__ == "__main__":
    main()
