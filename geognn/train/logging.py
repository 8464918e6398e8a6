"""Where a run's numbers go: ``metrics.csv`` (always), TensorBoard events (when the
``tensorboard`` package is installed) and ``skipped.csv`` (structures left out, with why).
Only rank 0 writes."""

from __future__ import annotations

import csv
from pathlib import Path


class RunLog:
    """One CSV row (and TensorBoard scalars) per epoch; columns fixed when the run starts."""

    def __init__(self, out: Path, columns: list[str], resume_epoch: int | None = None, enabled: bool = True):
        self.path, self.columns, self.enabled = out / "metrics.csv", columns, enabled
        self.tb = None
        if not enabled:
            return
        if resume_epoch is not None and self.path.exists():
            # keep the rows of epochs the resumed state has finished (a kill may have left one more)
            rows = [r for r in csv.DictReader(self.path.open()) if int(r["epoch"]) <= resume_epoch]
            self._write_all(rows)
        else:
            self._write_all([])
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            SummaryWriter = None
        if SummaryWriter is not None:
            self.tb = SummaryWriter(log_dir=str(out / "tensorboard"), purge_step=resume_epoch)

    def _write_all(self, rows) -> None:
        with self.path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore").writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
            )
        if self.tb is not None:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    tag = key.replace("_", "/", 1) if key.startswith(("val_", "train_")) else key
                    self.tb.add_scalar(tag, value, row["epoch"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def log_skipped(out: Path, skipped, where: str) -> None:
    """Append (id, reason) pairs to ``skipped.csv``."""
    if not skipped:
        return
    path = out / "skipped.csv"
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(["id", "reason", "where"])
        for item in skipped:
            sid, reason = (item.id, item.reason) if hasattr(item, "id") else item
            writer.writerow([sid, reason, where])
