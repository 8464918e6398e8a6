"""Command line: ``geognn train`` and ``geognn predict``.

Errors in user input become one-line messages on stderr and a non-zero exit status, never
tracebacks; ``predict`` keeps going over the other files and lists those that failed.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import warnings
from pathlib import Path


from . import conventions as K

#: Checkpoint used by ``geognn predict`` when --checkpoint is not given (shipped in the package).
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "qm9_schnet_u0.pt"

PREDICT_COLUMNS = ("file", "formula", "natoms", "energy_eV", "energy_per_atom_eV", "max_force_eV_A",
                   "stress_GPa")
VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))  # xx yy zz yz xz xy, ASE's order


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


# --------------------------------------------------------------------------- predict
def predict_structures(model, paths, batch_size: int = 16, device: str = "cpu",
                       allow_partial_occupancy: bool = False):
    """Predict every structure in ``paths``; returns (rows, failures, notes).

    ``rows``: dicts with PREDICT_COLUMNS (stress as 6 Voigt components in GPa, or None for
    non-periodic structures); ``failures``: one-line messages; ``notes``: warnings for the user.
    """
    import torch

    from .graph.build import build_graph, collate
    from .io import StructureError, expand_paths, read_file, source_of

    failures, notes, items = [], [], []  # items: (atoms, graph)
    for path in paths:
        try:
            files = expand_paths(path)
        except StructureError as exc:
            failures.append(str(exc))
            continue
        for f in files:
            try:
                structures = read_file(f, allow_partial_occupancy=allow_partial_occupancy)
            except StructureError as exc:
                failures.append(str(exc))
                continue
            for atoms in structures:
                if int(atoms.numbers.max()) > model.backbone.max_z:
                    failures.append(f"{source_of(atoms)}: element Z={int(atoms.numbers.max())} is beyond "
                                    f"what this model can embed (max_z={model.backbone.max_z})")
                    continue
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    try:
                        graph = build_graph(atoms, model.cutoff, model.max_neighbors)
                    except StructureError as exc:
                        failures.append(str(exc))
                        continue
                notes.extend(str(w.message) for w in caught)
                items.append((atoms, graph))

    meta = model.metadata
    trained_periodic, elements = meta.get("periodic"), set(meta.get("elements", []))
    trained_on = meta.get("trained_on", "unknown data")
    mismatched = [a for a, _ in items if trained_periodic is not None and bool(a.pbc.any()) != trained_periodic]
    if mismatched:
        kind = "periodic structures" if not trained_periodic else "molecules (no periodic direction)"
        notes.append(f"model was trained on {'crystals' if trained_periodic else 'molecules'} "
                     f"({trained_on}); {len(mismatched)} input(s) are {kind}, outside its training "
                     "domain: predictions run but are extrapolations")
    if elements:
        unseen = sorted({int(z) for a, _ in items for z in a.numbers} - elements)
        if unseen:
            from ase.data import chemical_symbols

            notes.append("elements never seen in training: " + ", ".join(chemical_symbols[z] for z in unseen)
                         + " (their energies are not meaningful)")

    model = model.to(device).eval()
    rows = []
    for k in range(0, len(items), batch_size):
        chunk = items[k:k + batch_size]
        batch = collate([g for _, g in chunk]).to(device)
        out = model(batch, forces=True, stress=any(a.pbc.any() for a, _ in chunk))
        forces = torch.split(out[K.FORCES].detach().cpu(), [len(a) for a, _ in chunk])
        for b, (atoms, _) in enumerate(chunk):
            energy = float(out[K.ENERGY][b].detach())
            stress = None
            if atoms.pbc.any():
                s = out[K.STRESS][b].detach().cpu().double().numpy() * K.EV_PER_A3_TO_GPA
                stress = [float(s[i, j]) for i, j in VOIGT]
            rows.append({"file": atoms.info.get("source", ""), "formula": atoms.get_chemical_formula(),
                         "natoms": len(atoms), "energy_eV": energy, "energy_per_atom_eV": energy / len(atoms),
                         "max_force_eV_A": float(forces[b].norm(dim=-1).max()), "stress_GPa": stress})
    return rows, failures, notes


def format_rows(rows, fmt: str) -> str:
    """Rows as an aligned table, CSV (stress as six columns) or JSON."""
    if fmt == "json":
        return json.dumps(rows, indent=2) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        stress_cols = [f"stress_{a}_GPa" for a in ("xx", "yy", "zz", "yz", "xz", "xy")]
        writer = csv.writer(buf)
        writer.writerow(list(PREDICT_COLUMNS[:-1]) + stress_cols)
        for r in rows:
            writer.writerow([r[c] for c in PREDICT_COLUMNS[:-1]] + (r["stress_GPa"] or [""] * 6))
        return buf.getvalue()
    header = ["file", "formula", "natoms", "energy (eV)", "eV/atom", "max|F| (eV/Å)",
              "stress (GPa) xx yy zz yz xz xy"]
    body = [[r["file"], r["formula"], str(r["natoms"]), f"{r['energy_eV']:.4f}",
             f"{r['energy_per_atom_eV']:.4f}", f"{r['max_force_eV_A']:.4f}",
             " ".join(f"{v:.3f}" for v in r["stress_GPa"]) if r["stress_GPa"] else "-"] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    lines = ["  ".join(x.ljust(w) for x, w in zip(line, widths)).rstrip() for line in [header, *body]]
    return "\n".join(lines) + "\n"


def cmd_predict(args) -> int:
    from .model import load_model

    checkpoint = Path(args.checkpoint) if args.checkpoint else DEFAULT_CHECKPOINT
    try:
        model = load_model(checkpoint)
    except (FileNotFoundError, ValueError) as exc:
        _error(str(exc))
        return 2
    if not args.checkpoint:
        print(f"note: using the shipped default checkpoint {checkpoint.name}: "
              f"{model.metadata.get('trained_on', 'unknown training data')}", file=sys.stderr)
    with warnings.catch_warnings(record=True) as caught:  # e.g. partial occupancies replaced
        warnings.simplefilter("always")
        rows, failures, notes = predict_structures(model, args.paths, args.batch_size, args.device,
                                                   args.allow_partial_occupancy)
    notes = [str(w.message) for w in caught] + notes
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    text = format_rows(rows, args.format)
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {len(rows)} prediction(s) to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    for message in failures:
        _error(message)
    if failures:
        print(f"{len(failures)} input(s) failed, {len(rows)} structure(s) predicted", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------- train
def cmd_train(args) -> int:
    from .io import StructureError
    from .train.config import TrainConfig, parse_assignment

    # precedence: defaults < --config file (or the resumed run's config.json) < options < --set
    try:
        if args.resume:
            config_path = Path(args.resume) / "config.json"
            if not config_path.exists():
                _error(f"{args.resume}: no config.json, not a geognn run folder")
                return 2
            if args.out or args.config:
                _error("--resume continues RUN_DIR with its own config.json: drop --out/--config")
                return 2
            config = TrainConfig.from_file(config_path)
            config.out = str(args.resume)
        else:
            config = TrainConfig.from_file(args.config) if args.config else TrainConfig()
        overrides = {key: getattr(args, key) for key in TRAIN_OPTIONS if getattr(args, key) is not None}
        overrides.update(parse_assignment(text) for text in args.set or [])
        config = config.updated(overrides, "command line").validate()
    except (ValueError, FileNotFoundError) as exc:
        _error(str(exc))
        return 2
    from .train.loop import train

    try:
        result = train(config, resume=bool(args.resume))
    except (ValueError, FileNotFoundError, StructureError) as exc:
        _error(str(exc))
        return 2
    if os.environ.get("RANK", "0") != "0":
        return 0  # under torchrun, rank 0 reports
    print(result.summary(config.target_name))
    print(f"checkpoint: {result.model_path}  (predict with: geognn predict --checkpoint "
          f"{result.model_path} FILE...)")
    return 0


#: ``geognn train`` options that set the config key of the same name.
TRAIN_OPTIONS = ("dataset", "data_root", "val_data_root", "target", "backbone", "cutoff", "epochs", "time_limit", "batch_size",
                 "lr", "seed", "out", "limit", "threads", "forces_weight", "stress_weight", "accumulate",
                 "scheduler", "warmup_steps", "ema_decay", "early_stopping", "checkpoint_every", "num_workers",
                 "on_error", "device")


# --------------------------------------------------------------------------- expressivity
def cmd_expressivity(args) -> int:
    from .expressivity.report import write_report

    split = lambda text: [x.strip() for x in text.split(",") if x.strip()]  # noqa: E731
    backbones = None if args.backbones == "all" else split(args.backbones)
    pairs = None if args.pairs == "all" else split(args.pairs)
    try:
        result = write_report(args.out, backbones, pairs, args.max_layers, args.seeds)
    except ValueError as exc:
        _error(str(exc))
        return 2
    print(f"wrote {result['markdown']} and {result['csv']} in {result['seconds']:.0f} s")
    if result["heatmap"] is None:
        print("warning: matplotlib is not installed, no heatmap (pip install geognn[report])", file=sys.stderr)
    else:
        print(f"heatmap: {result['heatmap']}")
    for pair, backbone in result["violations"]:
        _error(f"{backbone} separates '{pair}' beyond what GWL allows: a bug in the backbone or the probe")
    return 1 if result["violations"] else 0


# --------------------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="geognn", description="Geometric GNNs for molecules and materials.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model (default: SchNet on the shipped QM9 subset, U0)",
                       description="Options override the --config file; --set KEY=VALUE sets any config key "
                                   "(see geognn/train/config.py).")
    p.add_argument("--config", help="YAML or JSON file of config keys")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="set any config key (repeatable)")
    p.add_argument("--dataset", choices=["qm9", "oc20-is2re", "oc20-s2ef", "cif-folder", "extxyz", "ase-db"],
                   help="dataset kind (default: qm9)")
    p.add_argument("--data-root", help="dataset path (default: the shipped QM9 subset)")
    p.add_argument("--val-data-root", help="validation data of the same kind (e.g. OC20's val LMDB) instead of "
                                           "a random split")
    p.add_argument("--target", help="label to learn (default: U0 for qm9, energy otherwise)")
    p.add_argument("--backbone", help="backbone name (default: schnet)")
    p.add_argument("--cutoff", type=float, help="graph cutoff in Å (default: 5.0)")
    p.add_argument("--epochs", type=int, help="maximum number of epochs")
    p.add_argument("--time-limit", type=float, help="seconds of training, 0 for no limit (default: 150)")
    p.add_argument("--batch-size", type=int, help="structures per step per process")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--seed", type=int)
    p.add_argument("--limit", type=int, help="use at most this many structures")
    p.add_argument("--threads", type=int, help="torch threads")
    p.add_argument("--forces-weight", type=float, help="weight of the force loss (0: energy only)")
    p.add_argument("--stress-weight", type=float, help="weight of the stress loss")
    p.add_argument("--accumulate", type=int, help="batches per optimizer step")
    p.add_argument("--scheduler", choices=["plateau", "cosine", "constant"])
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--ema-decay", type=float, help="EMA of weights, e.g. 0.999 (0: off)")
    p.add_argument("--early-stopping", type=int, metavar="EPOCHS", help="stop after EPOCHS without improvement")
    p.add_argument("--checkpoint-every", type=int, metavar="STEPS", help="also write state.pt every STEPS")
    p.add_argument("--num-workers", type=int, help="DataLoader workers building graphs")
    p.add_argument("--on-error", choices=["raise", "skip"], help="bad structures: stop, or log to skipped.csv")
    p.add_argument("--device", help="auto, cpu, cuda")
    p.add_argument("--out", help="run folder (default: runs/default)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="energies, forces and stress of structures in files")
    p.add_argument("paths", nargs="+", metavar="FILE_OR_DIR",
                   help="CIF, POSCAR/CONTCAR/.vasp, .xyz/.extxyz, ASE .db/.traj/.json; folders are read recursively")
    p.add_argument("--checkpoint", help="model checkpoint (default: the shipped QM9 SchNet model)")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.add_argument("--output", help="write the predictions to this file instead of stdout")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--allow-partial-occupancy", action="store_true",
                   help="read CIF sites with occupancy < 1 as their majority species (default: reject)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("expressivity", help="hard pairs vs GWL/IGWL tests and every backbone: report.md, .csv, heatmap")
    p.add_argument("--backbones", default="all", help="comma-separated backbone names, or all (default)")
    p.add_argument("--pairs", default="all", help="comma-separated pair names (see geognn.expressivity.load_pairs), or all")
    p.add_argument("--max-layers", type=int, default=6, help="deepest model tried per pair (default: 6)")
    p.add_argument("--seeds", type=int, default=3, help="random initialisations per probe (default: 3)")
    p.add_argument("--out", default="expressivity_report", help="output folder (default: expressivity_report)")
    p.set_defaults(func=cmd_expressivity)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
