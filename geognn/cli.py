"""Command line: ``geognn train``, ``predict``, ``expressivity``, ``plot``, ``doctor`` and ``export``.

Errors in user input become one-line messages on stderr (``error: ...``, naming the file or
option and the problem), never tracebacks. Exit status: 0 done; 2 bad arguments, options,
config or input (as argparse: nothing was done); 1 the command ran but something failed
(``predict`` keeps going over the other files and lists those that failed; a file that cannot
be written); 130 (SIGINT, Ctrl-C) / 143 (SIGTERM) interrupted: ``geognn train`` first finishes
the current step, saves ``state.pt`` and prints the ``geognn train --resume RUN_DIR`` command.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shlex
import sys
import warnings
from pathlib import Path

from . import conventions as K

#: Checkpoints used by ``geognn predict`` when --checkpoint is not given (shipped in the package):
#: molecules get the QM9 model (energy, eV), periodic structures the MP-20 crystal ensemble
#: (formation energy per atom, eV/atom; scripts/train_crystal_model.py).
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "qm9_schnet_u0.pt"
CRYSTAL_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "mp20_schnet_eform_ensemble.pt"

VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))  # xx yy zz yz xz xy, ASE's order
VOIGT_NAMES = ("xx", "yy", "zz", "yz", "xz", "xy")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def _os_message(exc: OSError) -> str:
    """``FILE: reason`` of an OSError from the system (ours carry their message in ``str``)."""
    return f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc)


# --------------------------------------------------------------------------- predict
def predict_columns(model) -> list[tuple[str, str]]:
    """``(column, unit)`` of ``geognn predict``'s rows for ``model`` (a Model, an Ensemble or a FrameSpread).

    ``file``, ``formula``, ``natoms``; then one column per target, named exactly as the target,
    in its unit (``<name>_std`` after it for an ensemble: the members' spread; for a
    ``geognn.model.FrameSpread``: the spread over frames or grids); then, only when
    the model has an extensive energy target E: ``<E>_per_atom`` (eV/atom), ``max_force``
    (eV/Å) and ``stress`` (GPa, 6 Voigt components, None for non-periodic structures).
    """
    from .model import Ensemble, FrameSpread

    cols = [("file", ""), ("formula", ""), ("natoms", "")]
    for t in model.targets:
        cols.append((t.name, t.unit))
        if isinstance(model, (Ensemble, FrameSpread)):
            cols.append((t.name + "_std", t.unit))
    energy = model.energy_target
    if energy is not None:
        cols += [(energy.name + "_per_atom", "eV/atom"), ("max_force", "eV/Å"), ("stress", "GPa")]
    return cols


def read_inputs(paths, allow_partial_occupancy: bool = False):
    """Every structure in ``paths`` (files or folders), each file read once: (structures, failures).

    ``structures``: ``ase.Atoms`` in the order of ``paths`` and of each folder's files;
    ``failures``: one line per path or file that could not be read (naming it and the problem).
    """
    from .io import StructureError, expand_paths, read_file

    structures, failures = [], []
    for path in paths:
        try:
            files = expand_paths(path)
        except StructureError as exc:
            failures.append(str(exc))
            continue
        for f in files:
            try:
                structures.extend(read_file(f, allow_partial_occupancy=allow_partial_occupancy))
            except StructureError as exc:
                failures.append(str(exc))
    return structures, failures


def predict_structures(model, structures, batch_size: int = 16, device: str = "cpu"):
    """Predict every structure of ``structures`` (``ase.Atoms``, from ``read_inputs``); returns
    (rows, failures, notes).

    ``rows``: dicts keyed by ``predict_columns(model)`` (stress as 6 Voigt components in GPa, or
    None for non-periodic structures); ``failures``: one-line messages (elements the model does
    not know, graphs that cannot be built); ``notes``: warnings for the user.
    """
    import torch

    from .graph.build import build_graph, collate
    from .io import StructureError, source_of

    failures, notes, items = [], [], []  # items: (atoms, graph)
    for atoms in structures:
        unknown = model.unknown_elements(atoms.numbers)  # not among its species, or beyond max_z
        if unknown:
            failures.append(f"{source_of(atoms)}: {model.unknown_elements_message(unknown)}")
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
        notes.append(
            f"model was trained on {'crystals' if trained_periodic else 'molecules'} "
            f"({trained_on}); {len(mismatched)} input(s) are {kind}, outside its training "
            "domain: predictions run but are extrapolations"
        )
    if elements:
        unseen = sorted({int(z) for a, _ in items for z in a.numbers} - elements)
        if unseen:
            from ase.data import chemical_symbols

            notes.append(
                "elements never seen in training: "
                + ", ".join(chemical_symbols[z] for z in unseen)
                + " (their predictions are not meaningful)"
            )

    model = model.to(device).eval()
    scalars = [t.name for t in model.targets] + [t.name + "_std" for t in model.targets]
    energy = model.energy_target
    rows = []
    for k in range(0, len(items), batch_size):
        chunk = items[k : k + batch_size]
        batch = collate([g for _, g in chunk]).to(device)
        with torch.set_grad_enabled(energy is not None):
            out = model(
                batch, forces=energy is not None, stress=energy is not None and any(a.pbc.any() for a, _ in chunk)
            )
        forces = torch.split(out[K.FORCES].detach().cpu(), [len(a) for a, _ in chunk]) if energy else None
        for b, (atoms, _) in enumerate(chunk):
            row = {"file": atoms.info.get("source", ""), "formula": atoms.get_chemical_formula(), "natoms": len(atoms)}
            for name in scalars:
                if name in out:
                    row[name] = float(out[name][b].detach())
            if energy is not None:
                row[energy.name + "_per_atom"] = row[energy.name] / len(atoms)
                row["max_force"] = float(forces[b].norm(dim=-1).max())
                stress = None
                if atoms.pbc.any():
                    s = out[K.STRESS][b].detach().cpu().double().numpy() * K.EV_PER_A3_TO_GPA
                    stress = [float(s[i, j]) for i, j in VOIGT]
                row["stress"] = stress
            rows.append(row)
    return rows, failures, notes


def format_rows(rows, fmt: str, columns: list[tuple[str, str]], about: dict | None = None) -> str:
    """Rows as an aligned table (units in the header), CSV (header = column names exactly; stress
    as six columns ``stress_xx`` ... in GPa) or JSON (``{"model": about, "units": {...},
    "predictions": rows}``)."""
    names = [c for c, _ in columns]
    if fmt == "json":
        units = {c: u for c, u in columns if u}
        return json.dumps({"model": about or {}, "units": units, "predictions": rows}, indent=2) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        flat = [c for c in names if c != "stress"]
        writer = csv.writer(buf)
        writer.writerow(flat + ([f"stress_{v}" for v in VOIGT_NAMES] if "stress" in names else []))
        for r in rows:
            stress = (r["stress"] or [""] * 6) if "stress" in names else []
            writer.writerow([r.get(c, "") for c in flat] + stress)
        return buf.getvalue()
    header, body = [], [[] for _ in rows]
    for name, unit in columns:
        if name == "stress":
            header.append("stress (GPa) xx yy zz yz xz xy")
        else:
            header.append(f"{name} ({unit})" if unit else name)
        for line, r in zip(body, rows):
            value = r.get(name)
            if name == "stress":
                line.append(" ".join(f"{v:.3f}" for v in value) if value else "-")
            elif isinstance(value, float):
                line.append(f"{value:.4f}")
            else:
                line.append(str(value))
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    lines = ["  ".join(x.ljust(w) for x, w in zip(line, widths)).rstrip() for line in [header, *body]]
    return "\n".join(lines) + "\n"


def default_checkpoint(structures) -> Path:
    """The shipped checkpoint for ``structures`` (``ase.Atoms``): CRYSTAL_CHECKPOINT when every
    one is periodic, DEFAULT_CHECKPOINT (QM9) when none is; ValueError when they mix."""
    periodic = {bool(a.pbc.any()) for a in structures}
    if periodic == {True, False}:
        raise ValueError(
            "the inputs mix molecules and periodic structures, which the shipped models answer "
            "differently (molecules: QM9 energy in eV; crystals: MP-20 formation energy per atom "
            "in eV/atom): predict them in two calls, or name a model with --checkpoint"
        )
    return CRYSTAL_CHECKPOINT if periodic == {True} else DEFAULT_CHECKPOINT


def cmd_predict(args) -> int:
    from .model import Ensemble, FrameSpread, load_models
    from .runtime import tune_allocator

    tune_allocator()  # keep freed tensor memory in the process (GEOGNN_TUNE_ALLOCATOR=0: off)
    if args.checkpoint:  # --checkpoint a.pt b.pt FILE...: argparse gives FILE to --checkpoint too
        n = 1
        while n < len(args.checkpoint) and args.checkpoint[n].lower().endswith(CHECKPOINT_SUFFIXES):
            n += 1
        args.checkpoint, args.paths = args.checkpoint[:n], args.checkpoint[n:] + list(args.paths)
    if not args.paths:
        _error("no input files: geognn predict [--checkpoint MODEL.pt ...] FILE_OR_DIR ...")
        return 2
    if args.batch_size < 1:
        _error(f"--batch-size {args.batch_size}: must be >= 1")
        return 2
    try:
        _check_device(args.device)
        if args.output:
            _check_output_file(args.output)
    except ValueError as exc:
        _error(str(exc))
        return 2
    with warnings.catch_warnings(record=True) as caught:  # e.g. partial occupancies replaced
        warnings.simplefilter("always")
        structures, read_failures = read_inputs(args.paths, args.allow_partial_occupancy)
    read_notes = [str(w.message) for w in caught]
    try:
        paths = [Path(p) for p in args.checkpoint] if args.checkpoint else [default_checkpoint(structures)]
        model = load_models(paths)
        if args.uncertainty == "frames":
            model = FrameSpread(model)
    except (FileNotFoundError, ValueError) as exc:
        _error(str(exc))
        return 2
    except OSError as exc:  # e.g. a checkpoint that cannot be read
        _error(_os_message(exc))
        return 2
    if not args.checkpoint:
        meta = model.metadata
        kind = "crystal" if paths[0] == CRYSTAL_CHECKPOINT else "molecule"
        mae = (
            f"; test MAE {meta['test_mae']:.3g} {meta.get('test_mae_unit', '')} on {meta.get('test_set', 'held-out data')}"
            if isinstance(meta.get("test_mae"), (int, float))
            else ""
        )
        print(
            f"note: no --checkpoint: answered by the shipped {kind} model {paths[0].name} "
            f"({meta.get('trained_on', 'unknown training data')}{mae})",
            file=sys.stderr,
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows, failures, notes = predict_structures(model, structures, args.batch_size, args.device)
    failures = read_failures + failures
    notes = read_notes + [str(w.message) for w in caught] + notes
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    about = {
        "checkpoints": [str(p) for p in paths],
        "trained_on": model.metadata.get("trained_on"),
        "targets": [t.to_dict() for t in model.targets],
        "ensemble": len(model.members) if isinstance(model, Ensemble) else 1,
    }
    if isinstance(model, FrameSpread):
        about["uncertainty"] = {"frames": "frames", "grid": f"{model.num_rotations} rotated grids"}[model.kind]
    text = format_rows(rows, args.format, predict_columns(model), about)
    if args.output:
        try:
            Path(args.output).write_text(text)
        except OSError as exc:
            _error(f"--output {args.output}: {exc.strerror}")
            return 1
        print(f"wrote {len(rows)} prediction(s) to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    for message in failures:
        _error(message)
    if failures:
        print(f"{len(failures)} input(s) failed, {len(rows)} structure(s) predicted", file=sys.stderr)
        return 1
    return 0


def _check_device(device: str) -> None:
    """ValueError unless ``device`` names a torch device this machine has (cpu, cuda[:N], mps)."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {device!r}: not a device name (cpu, cuda, cuda:N, mps)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device!r}: no CUDA device is available (use --device cpu)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"--device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"--device {device!r}: MPS is not available (use --device cpu)")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {device!r}: choose cpu, cuda, cuda:N or mps")


def _check_output_file(path) -> None:
    """ValueError when ``--output path`` cannot be written: a folder, or in a folder that does not exist."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"--output {path}: a folder; give a file name")
    if not path.parent.is_dir():
        raise ValueError(f"--output {path}: folder {path.parent} does not exist")


# --------------------------------------------------------------------------- train
def cmd_train(args) -> int:
    from .io import StructureError
    from .runtime import tune_allocator
    from .train.config import TrainConfig, parse_assignment

    tune_allocator()  # keep freed tensor memory in the process (GEOGNN_TUNE_ALLOCATOR=0: off)
    # precedence: defaults < --config file (or the resumed run's config.json) < options < --set
    try:
        if args.resume:
            config_path = Path(args.resume) / "config.json"
            if not Path(args.resume).is_dir():
                _error(
                    f"--resume {args.resume}: "
                    + (
                        "a file, not a geognn run folder"
                        if Path(args.resume).exists()
                        else "no such folder, not a geognn run folder"
                    )
                )
                return 2
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
        for key in ("target", "unit", "readout"):  # repeatable: one value stays a plain string
            if key in overrides and len(overrides[key]) == 1:
                overrides[key] = overrides[key][0]
        if args.split is not None:
            overrides["split" if args.split in ("random", "qm9-standard") else "split_file"] = args.split
        overrides.update(parse_assignment(text) for text in args.set or [])
        config = config.updated(overrides, "command line").validate()
        _check_backbone(config)
        _check_folder(config.out, "--out")
    except (ValueError, OSError) as exc:  # OSError: e.g. a --config file that cannot be read
        _error(_os_message(exc) if isinstance(exc, OSError) else str(exc))
        return 2
    from .train.loop import TrainingInterrupted, train

    def show(message, category, *_args, **_kwargs):  # warnings as one line each, while the run goes on
        print(f"warning: {message}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = show
            result = train(config, resume=bool(args.resume))
    except (ValueError, FileNotFoundError, StructureError) as exc:
        _error(str(exc))
        return 2
    except OSError as exc:  # a folder or file that cannot be written or read
        _error(_os_message(exc))
        return 1
    except TrainingInterrupted as exc:
        if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 reports
            print(f"{exc}\nresume with: geognn train --resume {shlex.quote(str(config.out))}", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:  # before training started, or a second Ctrl-C before the state was saved
        state = "a state.pt" if any(Path(config.out).glob("**/state.pt")) else "no state.pt yet"
        print(
            f"interrupted; {config.out} holds {state}: geognn train --resume "
            f"{shlex.quote(str(config.out))} continues from the last saved step",
            file=sys.stderr,
        )
        return 130
    if os.environ.get("RANK", "0") != "0":
        return 0  # under torchrun, rank 0 reports
    print(result.summary())
    print(f"checkpoint: {result.model_path}  (predict with: geognn predict --checkpoint {result.model_path} FILE...)")
    return 0


def _check_backbone(config) -> None:
    """Build the configured backbone once, before any data is read: ValueError naming a bad
    backbone name or ``backbone_kwargs`` key (the constructor's own message)."""
    from .model import build_model

    extra = {"frame_averaging": config.frame_averaging} if config.frame_averaging is not None else {}
    try:
        build_model(
            config.backbone,
            cutoff=config.cutoff,
            max_neighbors=config.max_neighbors,
            **extra,
            **config.resolved_backbone_kwargs(),
        )
    except (TypeError, RuntimeError) as exc:  # an unknown keyword; a size torch cannot make
        raise ValueError(
            f"config backbone_kwargs={config.backbone_kwargs!r} for backbone "
            f"{config.backbone!r}: {' '.join(str(exc).split())[:300]}"
        ) from None


def _check_folder(path, option: str) -> None:
    """ValueError when ``path`` cannot become a folder (it, or a folder above it, is a file)."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise ValueError(f"{option} {path}: {p} is a file, not a folder")
            if not os.access(p, os.W_OK):
                raise ValueError(f"{option} {path}: {p} is not writable")
            return


#: ``geognn train`` options that set the config key of the same name.
TRAIN_OPTIONS = (
    "dataset",
    "data_root",
    "val_data_root",
    "target",
    "unit",
    "readout",
    "backbone",
    "cutoff",
    "epochs",
    "time_limit",
    "batch_size",
    "lr",
    "seed",
    "out",
    "limit",
    "threads",
    "forces_weight",
    "stress_weight",
    "accumulate",
    "scheduler",
    "warmup_steps",
    "ema_decay",
    "early_stopping",
    "checkpoint_every",
    "num_workers",
    "on_error",
    "device",
    "ensemble",
    "compile",
)


# --------------------------------------------------------------------------- expressivity
def cmd_expressivity(args) -> int:
    import torch

    from .expressivity.report import load_user_pair, write_report

    split = lambda text: [x.strip() for x in text.split(",") if x.strip()]  # noqa: E731
    backbones = None if args.backbones == "all" else split(args.backbones)
    pairs = None if args.pairs == "all" else split(args.pairs)
    numbers = {"--max-layers": args.max_layers, "--seeds": args.seeds, "--epochs": args.epochs, "--k": args.k}
    for option, value in numbers.items():
        least = 2 if option == "--k" else 1
        if value is not None and value < least:
            _error(f"{option} {value}: must be >= {least}")
            return 2
    if args.graph_cutoff is not None and not args.graph_cutoff > 0:
        _error(f"--graph-cutoff {args.graph_cutoff}: must be > 0 Å")
        return 2
    try:
        _check_folder(args.out, "--out")
    except ValueError as exc:
        _error(str(exc))
        return 2
    if args.train:
        return _train_expressivity(args, backbones)
    try:
        user = [load_user_pair(*args.pair, graph_cutoff=args.graph_cutoff)] if args.pair else None
        dtype = {"float32": torch.float32, "float64": None}[args.dtype]
        result = write_report(
            args.out,
            backbones,
            pairs,
            args.max_layers,
            3 if args.seeds is None else args.seeds,
            pairs=user,
            dtype=dtype,
        )
    except ValueError as exc:
        _error(str(exc))
        return 2
    except OSError as exc:
        _error(_os_message(exc))
        return 1
    print(f"wrote {result['markdown']} and {result['csv']} in {result['seconds']:.0f} s")
    if result["heatmap"] is None:
        print("warning: matplotlib is not installed, no heatmap (pip install geognn[report])", file=sys.stderr)
    else:
        print(f"heatmap: {result['heatmap']}")
    for pair, backbone in result["violations"]:
        _error(f"{backbone} separates '{pair}' beyond what GWL allows: a bug in the backbone or the probe")
    return 1 if result["violations"] else 0


def _train_expressivity(args, backbones) -> int:
    """``geognn expressivity --train``: the dojo's trained k-chain experiment (results.json, table.md)."""
    import json
    from pathlib import Path

    from .expressivity.training import format_table, k_chain_experiment, results_json

    seeds = 10 if args.seeds is None else args.seeds
    try:
        results = k_chain_experiment(backbones, k=args.k, seeds=seeds, epochs=args.epochs)
    except ValueError as exc:
        _error(str(exc))
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = format_table(results, args.k)
    (out / "trained.md").write_text(table)
    (out / "trained.json").write_text(json.dumps(results_json(results, args.k, seeds, args.epochs), indent=1))
    print(table, end="")
    print(f"wrote {out / 'trained.md'} and {out / 'trained.json'}")
    return 0


# --------------------------------------------------------------------------- plot, doctor
def cmd_plot(args) -> int:
    """``geognn plot RUN_DIR``: learning_curves.png and parity.png (geognn/plot.py); prints their paths."""
    from .plot import PlotError, parity_statistics, parity_title, plot_learning_curves, plot_parity

    if not Path(args.run_dir).is_dir():
        _error(f"{args.run_dir}: no such run folder")
        return 2
    errors = []
    for make in (plot_learning_curves, plot_parity):
        try:
            path = make(args.run_dir)
        except PlotError as exc:
            if str(exc) not in errors:
                errors.append(str(exc))
            continue
        print(path)
        if make is plot_parity:
            for name, stats in parity_statistics(args.run_dir).items():
                print(f"  {parity_title(name, stats)}")
    for message in errors:
        _error(message)
    return 2 if errors else 0


def cmd_export(args) -> int:
    """``geognn export MODEL.pt OUT.pt``: a TorchScript file that runs with torch alone (geognn/export.py)."""
    from .export import ExportError, export_model
    from .model import load_model

    try:
        model = load_model(args.checkpoint)
    except (FileNotFoundError, ValueError) as exc:
        _error(str(exc))
        return 2
    except OSError as exc:  # e.g. a checkpoint that cannot be read
        _error(_os_message(exc))
        return 2
    try:
        export_model(model, args.out)
    except ExportError as exc:
        _error(f"{args.checkpoint}: {exc}")
        return 2
    except OSError as exc:  # an output folder that cannot be made or written
        _error(f"{args.out}: cannot write ({exc.strerror or exc})")
        return 1
    except RuntimeError as exc:  # the traced module differs from the eager model: nothing written
        _error(f"{args.checkpoint}: {exc}")
        return 1
    print(f"wrote {args.out} (load with torch.jit.load; inputs and outputs: geognn/export.py)")
    return 0


def cmd_doctor(args) -> int:
    """``geognn doctor``: versions, code paths and a forward + backward of every backbone (geognn/doctor.py)."""
    from .doctor import main as doctor_main

    backbones = None if args.backbones == "all" else [x.strip() for x in args.backbones.split(",") if x.strip()]
    return doctor_main(device=args.device, as_json=args.json, backbones=backbones)


# --------------------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="geognn", description="Geometric GNNs for molecules and materials.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "train",
        help="train a model (default: SchNet on the shipped QM9 subset, U0)",
        description="Options override the --config file; --set KEY=VALUE sets any config key "
        "(see geognn/train/config.py).",
    )
    p.add_argument("--config", help="YAML or JSON file of config keys")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="set any config key (repeatable)")
    p.add_argument(
        "--dataset",
        choices=["qm9", "oc20-is2re", "oc20-s2ef", "cif-folder", "extxyz", "ase-db"],
        help="dataset kind (default: qm9)",
    )
    p.add_argument("--data-root", help="dataset path (default: the shipped QM9 subset)")
    p.add_argument(
        "--val-data-root", help="validation data of the same kind (e.g. OC20's val LMDB) instead of a random split"
    )
    p.add_argument(
        "--target",
        action="append",
        metavar="NAME",
        help="label to learn, repeatable for several (default: U0 for qm9; the columns of a CGCNN "
        "id_prop.csv header, else energy)",
    )
    p.add_argument(
        "--unit",
        action="append",
        metavar="UNIT",
        help="unit of the labels in the files, one for all or one per --target (default: eV; energies "
        "are converted to eV, eV/atom and meV/atom to eV/atom)",
    )
    p.add_argument(
        "--readout",
        action="append",
        choices=["sum", "mean"],
        help="sum (extensive: total energies) or mean (intensive: per-atom energies, band gaps, ...), "
        "one for all or one per --target (default: mean for per-atom units and non-energies, "
        "sum for total energies)",
    )
    p.add_argument(
        "--split",
        metavar="FILE",
        help="train/val/test by ids from a split.json (a run's, or geognn.datasets.write_split's); "
        "or 'random' (default) / 'qm9-standard'",
    )
    p.add_argument(
        "--ensemble",
        type=int,
        metavar="N",
        help="train N models (seeds seed..seed+N-1, same split) into one ensemble checkpoint",
    )
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
    p.add_argument(
        "--compile",
        action="store_const",
        const=True,
        help="torch.compile the backbone (first steps slower while it compiles; steps with a force or "
        "stress loss run it eagerly)",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "predict", help="each target of the model (energies, forces, stress, ...) for the structures in files"
    )
    p.add_argument(
        "paths",
        nargs="*",
        metavar="FILE_OR_DIR",
        help="CIF, POSCAR/CONTCAR/.vasp, .xyz/.extxyz, ASE .db/.traj/.json; folders are read recursively",
    )
    p.add_argument(
        "--checkpoint",
        nargs="+",
        metavar="PT",
        help="model checkpoint; several (a.pt b.pt ...) make an ensemble: mean and <target>_std "
        "(default: the shipped models: QM9 SchNet for molecules, the MP-20 crystal ensemble for periodic structures). Names after the first that do not end in "
        ".pt/.pth/.ckpt are taken as inputs",
    )
    p.add_argument(
        "--uncertainty",
        choices=["ensemble", "frames"],
        default="ensemble",
        help="<target>_std column: 'ensemble' (default) is the members' spread when there are several "
        "checkpoints or an ensemble checkpoint (none for a single model); 'frames' is one model's "
        "spread over its frames (frame_averaging=...) or over 8 random rotations of its "
        "orientation grid (ponita), at no extra training",
    )
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.add_argument("--output", help="write the predictions to this file instead of stdout")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--allow-partial-occupancy",
        action="store_true",
        help="read CIF sites with occupancy < 1 as their majority species (default: reject)",
    )
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("expressivity", help="hard pairs vs GWL/IGWL tests and every backbone: report.md, .csv, heatmap")
    p.add_argument("--backbones", default="all", help="comma-separated backbone names, or all (default)")
    p.add_argument(
        "--pairs", default="all", help="comma-separated pair names (see geognn.expressivity.load_pairs), or all"
    )
    p.add_argument("--max-layers", type=int, default=6, help="deepest model tried per pair (default: 6)")
    p.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="random initialisations per probe (default: 3) or trained runs per cell with --train (default: 10)",
    )
    p.add_argument(
        "--pair",
        nargs=2,
        metavar=("G1", "G2"),
        help="your own pair instead of the library: two torch.save'd graphs (.pt, PyG Data: pos, edge_index, "
        "z/atoms/one-hot x; trusted files only) or structure files (with --graph-cutoff)",
    )
    p.add_argument("--graph-cutoff", type=float, help="Å, radius graph of structure files given to --pair")
    p.add_argument(
        "--dtype",
        choices=["float64", "float32"],
        default="float64",
        help="precision of the pairs' coordinates (float32: as the dojo builds them; default: float64)",
    )
    p.add_argument(
        "--train",
        action="store_true",
        help="instead: the dojo's trained k-chain experiment (layers k//2..k+2; accuracy mean ± std)",
    )
    p.add_argument("--k", type=int, default=4, help="chain length for --train (default: 4)")
    p.add_argument("--epochs", type=int, default=100, help="epochs per run for --train (default: 100)")
    p.add_argument("--out", default="expressivity_report", help="output folder (default: expressivity_report)")
    p.set_defaults(func=cmd_expressivity)

    p = sub.add_parser(
        "plot", help="learning_curves.png (metrics.csv) and parity.png (test_predictions.csv) of a run folder"
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a geognn train run folder (--out)")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser(
        "doctor",
        help="versions, code paths (torch-scatter, CUDA/MPS, TensorBoard, neighbour "
        "list) and a forward + backward of every backbone, for bug reports",
    )
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.add_argument("--device", default="auto", help="auto (CUDA if available, as training), cpu, cuda, mps")
    p.add_argument("--backbones", default="all", help="comma-separated backbone names, or all (default)")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser(
        "export",
        help="write a model as a TorchScript file that runs without geognn (energy and forces)",
        description="Inputs of the written module: positions [N,3] Å, atomic numbers [N], cell [3,3] Å, "
        "edge_index [2,E], edge_shift [E,3]; outputs: energy [] eV, forces [N,3] eV/Å.",
    )
    p.add_argument("checkpoint", metavar="MODEL.pt", help="a geognn checkpoint (one model, not an ensemble)")
    p.add_argument("out", metavar="OUT.pt", help="the TorchScript file to write")
    p.set_defaults(func=cmd_export)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:  # geognn train handles its own (state saved, resume command)
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
