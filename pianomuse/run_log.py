"""A training run's record of itself: metrics.csv (one row per log step), the log line per row, and loss.png."""

from __future__ import annotations

import csv
import time
from pathlib import Path

METRICS_COLUMNS = [
    "step",
    "epoch",
    "lr",
    "train_loss",
    "val_nll",
    "tokens_per_s",
    "mfu",
    "padding_fraction",
    "grad_norm",
    "skipped_steps",
]


class LogInterval:
    """What the steps since the last log row did: the mean loss of the updates, tokens per second, padding, and
    MFU: the model FLOPs of the steps (of the real tokens, `pianomuse.flops`) per second over `peak_flops`, the
    matrix-multiply FLOP/s of all the devices the run uses."""

    def __init__(self, peak_flops: float):
        self.loss, self.updates, self.tokens, self.padded, self.flops = 0.0, 0, 0, 0, 0.0
        self.peak_flops = peak_flops
        self.start = time.perf_counter()

    def add(self, loss: float, updated: bool, real_tokens: int, padded_tokens: int, flops: float) -> None:
        if updated:
            self.loss += loss
            self.updates += 1
        self.tokens += real_tokens
        self.padded += padded_tokens
        self.flops += flops

    def row(self, step: int, epoch: int, lr: float, val_nll: float | None, grad_norm: float, skipped: int) -> dict:
        """The metrics.csv row of this interval, ending at `step`."""
        elapsed = time.perf_counter() - self.start
        return {
            "step": step,
            "epoch": epoch,
            "lr": f"{lr:.6g}",
            "train_loss": f"{self.loss / self.updates:.6f}" if self.updates else "",
            "val_nll": "" if val_nll is None else f"{val_nll:.6f}",
            # Significant digits, not decimals: a slow run (a busy machine) keeps the precision MFU is given in.
            "tokens_per_s": f"{self.tokens / elapsed:.7g}",
            "mfu": f"{self.flops / elapsed / self.peak_flops:.4g}",
            "padding_fraction": f"{1 - self.tokens / self.padded:.4f}",
            "grad_norm": f"{grad_norm:.6f}",
            "skipped_steps": skipped,
        }


class MetricsLog:
    """metrics.csv, one row per log step. On resume, rows past the checkpoint (written before a kill) are dropped."""

    def __init__(self, path: Path, resume_step: int):
        self.path = path
        rows = []
        if resume_step > 0 and path.exists():
            with open(path, newline="") as f:
                rows = [row for row in csv.DictReader(f) if int(row["step"]) <= resume_step]
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, METRICS_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)

    def append(self, row: dict) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, METRICS_COLUMNS).writerow(row)


def log_line(row: dict, max_steps: int, seconds_per_step: float) -> str:
    """One line of the training log for a metrics row: progress, loss, speed (tokens/s and MFU), the time left."""
    eta = time.strftime("%H:%M:%S", time.gmtime(seconds_per_step * (max_steps - row["step"])))
    val = f"  val {row['val_nll']}" if row["val_nll"] else ""
    return (
        f"step {row['step']}/{max_steps}  loss {row['train_loss'] or '-'}{val}  lr {row['lr']}  "
        f"{float(row['tokens_per_s']):,.0f} tok/s  MFU {float(row['mfu']):.1%}  ETA {eta}"
    )


def read_metrics(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def plot_losses(metrics_path: Path, out_path: Path, unigram: float | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    train = [(int(r["step"]), float(r["train_loss"])) for r in rows if r["train_loss"]]
    val = [(int(r["step"]), float(r["val_nll"])) for r in rows if r["val_nll"]]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss")
    if val:
        ax.plot(*zip(*val), "o-", label="validation NLL (subset)")
    if unigram is not None:
        ax.axhline(unigram, color="grey", linestyle="--", label="unigram baseline")
    ax.set_xlabel("step")
    ax.set_ylabel("NLL per completion token")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
