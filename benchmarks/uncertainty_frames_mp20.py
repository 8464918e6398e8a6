"""Frames-σ calibration on the 123 MP-20 val crystals (never seen in training) of a frame-averaged
e_form model: MAE, fraction of |error| within 1σ / 2σ, Spearman rank correlation of |error| with σ.

Run (the measurement quoted in the README):
    python -c "from geognn.datasets import cif_table_to_folder as f; D='../shared/data/cif/mp20_subset/';
               f(D+'train.csv', 'runs/mp20/train', columns={'formation_energy_per_atom': 'e_form'});
               f(D+'val.csv', 'runs/mp20/val', columns={'formation_energy_per_atom': 'e_form'})"
    geognn train --dataset cif-folder --data-root runs/mp20/train --target e_form --unit eV/atom \
        --readout mean --backbone faenet --set frame_averaging=stochastic --time-limit 60 --threads 2 --out runs/fa
    python benchmarks/uncertainty_frames_mp20.py runs/fa/model.pt runs/mp20/val
"""

import sys

import numpy as np
import torch
from scipy.stats import spearmanr

import geognn
from geognn.datasets import open_dataset
from geognn.model import FrameSpread

torch.set_num_threads(1)
model = FrameSpread(geognn.load_model(sys.argv[1])).eval()
folder = sys.argv[2]
val = open_dataset("cif-folder", folder, target="e_form", energy_unit="eV/atom")
ys, preds, sig = [], [], []
for k in range(0, len(val), 32):
    atoms = [val[i] for i in range(k, min(k + 32, len(val)))]
    batch = geognn.collate([geognn.build_graph(a, model.cutoff) for a in atoms])
    with torch.no_grad():
        out = model(batch)
    preds += out["e_form"].tolist()
    sig += out["e_form_std"].tolist()
    ys += [a.info["e_form"] for a in atoms]
ys, preds, sig = map(np.array, (ys, preds, sig))
err = np.abs(preds - ys)
print(
    f"n={len(ys)}  MAE {err.mean():.3f} eV/atom  median frames-sigma {np.median(sig):.4f} eV/atom  "
    f"within 1 sigma {np.mean(err <= sig):.3f}  within 2 sigma {np.mean(err <= 2 * sig):.3f}  "
    f"Spearman(|err|, sigma) {spearmanr(err, sig).statistic:.3f}  "
    f"zero-sigma structures {int(np.sum(sig < 1e-6))}"
)
print(
    "sigma quantiles (10, 50, 90, max) eV/atom:",
    np.round(np.quantile(sig, [0.1, 0.5, 0.9, 1.0]), 4),
    f" mean sigma {sig.mean():.4f}  median |err|/sigma over sigma>1e-6: "
    f"{np.median(err[sig > 1e-6] / sig[sig > 1e-6]):.1f}",
)
nz = sig > 1e-6
print(
    f"sigma > 1e-6 only (n={nz.sum()}): within 1 sigma {np.mean(err[nz] <= sig[nz]):.3f}  "
    f"Spearman {spearmanr(err[nz], sig[nz]).statistic:.3f}"
)
