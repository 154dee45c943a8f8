"""Train RWKV-7 to complete bar windows: resumable, evaluated, deterministic for a given seed.

The loss is the mean NLL of every next-token prediction in each window (`train.loss: window`), or of the completion
tokens only (`completion`: the context is read but never scored, and its hidden states never reach the head).
Validation NLL is always per completion token, so runs with either loss compare. Run it through Snakemake
(`snakemake -c8 train`); with `train.devices > 1` the rule starts it under torchrun and it trains with DDP, each
rank taking its share of the token-budget batches.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import math
import os
import random
import shutil
import subprocess
import sys
import time
import warnings
from functools import partial
from pathlib import Path

import datasets
import numpy as np
import torch
import yaml
from tqdm import tqdm

from pianomuse.batching import batch_loader, epoch_batches, pack_by_length, shard_for_rank, window_lengths
from pianomuse.checkpoint import load_resume_point, restore_rng_states, save_resume_point, save_weights
from pianomuse.devices import resolve_device
from pianomuse.files import write_json
from pianomuse.logs import console
from pianomuse.models import LEGACY_ARCH, arch_of, build_model, model_config as arch_config
from pianomuse.scoring import batch_nll, eval_subset, mean_nll, unigram_nll
from pianomuse.tokenizer import load_tokenizer, tokenizer_hash

METRICS_COLUMNS = [
    "step",
    "epoch",
    "lr",
    "train_loss",
    "val_nll",
    "tokens_per_s",
    "padding_fraction",
    "grad_norm",
    "skipped_steps",
]


# ----------------------------------------------------------------------------------------------------------------
# Optimiser and schedule


def optimizer_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups in the RWKV-LM manner.

    Only the 2-D weight matrices of the linear layers decay; the embedding, norms, biases, token-shift mixes and
    the LoRA-style time-mix parameters (w1, a2, ... , which are not `.weight`s) do not. The decay base `att.w0`
    learns at twice the rate, as in RWKV-LM's train_temp.
    """
    decay, no_decay, fast = [], [], []
    for name, param in model.named_parameters():
        if name.endswith("att.w0"):
            fast.append(param)
        elif name.endswith(".weight") and param.ndim == 2 and name != "emb.weight":
            decay.append(param)
        else:
            no_decay.append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0},
        {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0},
        {"params": fast, "weight_decay": 0.0, "lr_scale": 2.0},
    ]
    return [group for group in groups if group["params"]]


def lr_factor(step: int, warmup_steps: int, max_steps: int, min_ratio: float) -> float:
    """Linear warmup to 1 over `warmup_steps`, then a cosine down to `min_ratio` at `max_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, cfg: dict, max_steps: int):
    groups = optimizer_groups(model, cfg["weight_decay"])
    for group in groups:
        group["lr"] = cfg["lr"] * group["lr_scale"]
    optimizer = torch.optim.AdamW(groups, lr=cfg["lr"], betas=tuple(cfg["betas"]), eps=cfg["adam_eps"])
    schedule = partial(
        lr_factor, warmup_steps=cfg["warmup_steps"], max_steps=max_steps, min_ratio=cfg["min_lr"] / cfg["lr"]
    )
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


# ----------------------------------------------------------------------------------------------------------------
# Loss and evaluation


# ----------------------------------------------------------------------------------------------------------------
# One optimisation step


class NonFiniteGuard:
    """Counts non-finite steps in a row and aborts the run once there are too many."""

    def __init__(self, max_in_a_row: int, in_a_row: int = 0):
        self.max_in_a_row = max_in_a_row
        self.in_a_row = in_a_row

    def record(self, finite: bool, step: int) -> None:
        self.in_a_row = 0 if finite else self.in_a_row + 1
        if self.in_a_row >= self.max_in_a_row:
            raise RuntimeError(
                f"training aborted at step {step}: {self.in_a_row} non-finite losses or gradients in a row "
                f"(train.max_nonfinite_steps={self.max_in_a_row}); lower train.lr or check the data"
            )


def train_step(model, optimizer, batch, grad_clip: float, autocast, world_size: int) -> tuple[float, float, bool]:
    """Forward, backward, clip and update; returns (loss, grad norm, updated). A non-finite step updates nothing."""
    optimizer.zero_grad(set_to_none=True)
    with autocast():
        loss = batch_nll(model, batch)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    loss_value = loss.detach()
    if world_size > 1:  # every rank must take the same decision, so it looks at the mean loss
        torch.distributed.all_reduce(loss_value, op=torch.distributed.ReduceOp.AVG)
    finite = bool(torch.isfinite(loss_value)) and bool(torch.isfinite(grad_norm))
    if finite:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_value.item(), grad_norm.item(), finite


# ----------------------------------------------------------------------------------------------------------------
# Run bookkeeping


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
    """One line of the training log for a metrics row: progress, loss, speed and the time left."""
    eta = time.strftime("%H:%M:%S", time.gmtime(seconds_per_step * (max_steps - row["step"])))
    val = f"  val {row['val_nll']}" if row["val_nll"] else ""
    return (
        f"step {row['step']}/{max_steps}  loss {row['train_loss'] or '-'}{val}  lr {row['lr']}  "
        f"{float(row['tokens_per_s']):,.0f} tok/s  ETA {eta}"
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


# ----------------------------------------------------------------------------------------------------------------
# The training run


def model_config(config: dict, vocab_size: int):
    """The config of the model that `model.arch` names (RWKV-7 or the same-size Transformer)."""
    model, train = config["model"], config["train"]
    return arch_config(
        model.get("arch", LEGACY_ARCH),
        vocab_size,
        model["n_layer"],
        model["n_embd"],
        model["head_size"],
        dropout=train["dropout"],
        grad_checkpoint=train["grad_checkpoint"],
    )


def windows_fingerprint(*dataset_dirs: str | Path) -> str:
    """SHA-256 over the Arrow files of saved datasets: a run resumes only on the windows it started on."""
    digest = hashlib.sha256()
    for directory in dataset_dirs:
        for path in sorted(Path(directory).glob("*.arrow")):
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
    return digest.hexdigest()


def train(
    config: dict,
    train_dir: str | Path,
    val_dir: str | Path,
    tokenizer_path: str | Path,
    run_dir: str | Path,
    stop_at_step: int | None = None,
) -> dict:
    """Train (or resume) the run in `run_dir`; returns the final summary (also written to `done.json`).

    `stop_at_step` ends the process early, as a kill after that step's checkpoint would (used to test resuming).
    """
    cfg = config["train"]
    run_dir = Path(run_dir)
    rank, world_size, local_rank = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), 0
    if world_size > 1:
        local_rank = int(os.environ["LOCAL_RANK"])
    device = resolve_device(cfg["device"], local_rank)
    if world_size > 1:
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(device)
    is_writer = rank == 0
    seed_everything(cfg["seed"])
    autocast = partial(torch.autocast, device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    tokenizer = load_tokenizer(tokenizer_path)
    vocab_size, pad_id = len(tokenizer.vocab), tokenizer.pad_token_id
    train_ds, val_ds = datasets.load_from_disk(str(train_dir)), datasets.load_from_disk(str(val_dir))
    train_lengths, val_lengths = window_lengths(train_ds), window_lengths(val_ds)

    def batches_of_epoch(epoch: int) -> list[list[int]]:
        batches = epoch_batches(train_lengths, cfg["batch_tokens"], cfg["seed"], epoch, cfg["bucket_windows"])
        return shard_for_rank(batches, rank, world_size)

    max_steps = cfg["max_steps"] or cfg["epochs"] * len(batches_of_epoch(0))
    eval_windows = eval_subset(val_lengths, cfg["eval_windows"], cfg["seed"])
    eval_batches = pack_by_length(eval_windows, val_lengths, cfg["batch_tokens"])
    eval_loader = batch_loader(val_ds, eval_batches, pad_id, cfg["num_workers"], scored="completion")
    full_val_batches = pack_by_length(np.arange(len(val_lengths)), val_lengths, cfg["batch_tokens"])

    mconfig = model_config(config, vocab_size)
    model = build_model(mconfig).to(device)
    optimizer, scheduler = make_optimizer(model, cfg, max_steps)
    step, epoch, batch_in_epoch, best_val, skipped = 0, 0, 0, math.inf, 0
    guard = NonFiniteGuard(cfg["max_nonfinite_steps"])

    data_fingerprint = windows_fingerprint(train_dir, val_dir)
    resume = load_resume_point(run_dir)
    if resume is not None:
        weights, state = resume
        if state["model_config"] != dataclasses.asdict(mconfig):
            raise RuntimeError(
                f"{run_dir} holds a run of a different model ({state['model_config']}); "
                "choose another train.run or delete that folder"
            )
        if "windows_fingerprint" not in state:
            warnings.warn(f"{run_dir} was saved without a windows fingerprint (older pianomuse): not checked")
        elif state["windows_fingerprint"] != data_fingerprint:
            raise RuntimeError(
                f"{run_dir} holds a run trained on other windows (the windows were rebuilt since, e.g. after a "
                "windows/tokenizer/preset change); choose another train.run or delete that folder"
            )
        model.load_state_dict(weights)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        best_val, skipped, guard.in_a_row = state["best_val"], state["skipped_steps"], state["nonfinite_in_a_row"]
        restore_rng_states(state["rng"])
        print(f"resuming {run_dir} at step {step} (epoch {epoch}, batch {batch_in_epoch})", file=sys.stderr)
    raw_model = model
    if world_size > 1:
        device_ids = [local_rank] if device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    n_params = sum(p.numel() for p in raw_model.parameters())
    info = {
        "arch": arch_of(raw_model),
        "model": dataclasses.asdict(mconfig),
        "tokenizer_hash": tokenizer_hash(tokenizer_path),
        "n_params": n_params,
    }
    if is_writer:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        # The checkpoints' own tokenizer, so that a run folder is all `pianomuse complete` needs.
        shutil.copyfile(tokenizer_path, run_dir / "tokenizer.json")
        metrics = MetricsLog(run_dir / "metrics.csv", step)
        print(
            f"model: {n_params / 1e6:.2f}M parameters, {max_steps} steps on {device} x{world_size} "
            f"({torch.get_num_threads()} CPU threads)",
            file=sys.stderr,
        )

    def checkpoint(extra_metrics: dict) -> None:
        state = {
            "step": step,
            "epoch": epoch,
            "batch_in_epoch": batch_in_epoch,
            "best_val": best_val,
            "skipped_steps": skipped,
            "nonfinite_in_a_row": guard.in_a_row,
            "model_config": dataclasses.asdict(mconfig),
            "windows_fingerprint": data_fingerprint,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
        }
        save_resume_point(raw_model, {**info, "step": step, "metrics": extra_metrics}, state, run_dir)

    model.train()
    # The bar goes to the console (under Snakemake, not the log: that gets one line per log step). Where the
    # console is a file or a pipe (CI), a redraw every 30 s at most keeps it readable.
    screen = console()
    bars = {"disable": not is_writer, "file": screen, "mininterval": 0.2 if screen.isatty() else 30}
    progress = tqdm(total=max_steps, initial=step, desc=f"train {run_dir.name}", unit="step", **bars)
    session = {"start": time.perf_counter(), "step": step}  # for the ETA: this process's pace
    since_log = {"loss": 0.0, "updates": 0, "tokens": 0, "padded": 0, "start": time.perf_counter()}
    while step < max_steps and (stop_at_step is None or step < stop_at_step):
        batches = batches_of_epoch(epoch)
        for batch in batch_loader(train_ds, batches[batch_in_epoch:], pad_id, cfg["num_workers"], cfg["loss"]):
            batch = batch.to(device)
            lr = optimizer.param_groups[0]["lr"]
            loss, grad_norm, finite = train_step(model, optimizer, batch, cfg["grad_clip"], autocast, world_size)
            scheduler.step()
            step, batch_in_epoch = step + 1, batch_in_epoch + 1
            if batch_in_epoch == len(batches):
                epoch, batch_in_epoch = epoch + 1, 0
            if not finite:
                skipped += 1
                print(f"step {step}: non-finite loss {loss} / grad norm {grad_norm}, update skipped", file=sys.stderr)
            guard.record(finite, step)
            if finite:
                since_log["loss"] += loss
                since_log["updates"] += 1
            since_log["tokens"] += batch.real_tokens * world_size
            since_log["padded"] += batch.inputs.numel() * world_size
            progress.update(1)

            val_nll = None
            if is_writer and (step % cfg["eval_every"] == 0 or step == max_steps):
                subset = tqdm(eval_loader, desc="validation (subset)", unit="batch", leave=False, **bars)
                val_nll = mean_nll(raw_model, subset, device, autocast)
                if val_nll < best_val:
                    best_val = val_nll
                    save_weights(raw_model, {**info, "step": step, "metrics": {"val_nll": val_nll}}, run_dir, "best")
            if is_writer and (step % cfg["log_every"] == 0 or val_nll is not None or step == max_steps):
                elapsed = time.perf_counter() - since_log["start"]
                row = {
                    "step": step,
                    "epoch": epoch,
                    "lr": f"{lr:.6g}",
                    "train_loss": f"{since_log['loss'] / since_log['updates']:.6f}" if since_log["updates"] else "",
                    "val_nll": "" if val_nll is None else f"{val_nll:.6f}",
                    "tokens_per_s": f"{since_log['tokens'] / elapsed:.1f}",
                    "padding_fraction": f"{1 - since_log['tokens'] / since_log['padded']:.4f}",
                    "grad_norm": f"{grad_norm:.6f}",
                    "skipped_steps": skipped,
                }
                metrics.append(row)
                progress.set_postfix(
                    loss=row["train_loss"], tok_s=row["tokens_per_s"], val=row["val_nll"] or "-", refresh=False
                )
                pace = (time.perf_counter() - session["start"]) / (step - session["step"])
                tqdm.write(log_line(row, max_steps, pace), file=sys.stderr)
                since_log = {"loss": 0.0, "updates": 0, "tokens": 0, "padded": 0, "start": time.perf_counter()}
            if is_writer and (step % cfg["checkpoint_every"] == 0 or step == max_steps):
                checkpoint({"val_nll": val_nll, "best_val_nll": best_val})
            if step == max_steps or step == stop_at_step:
                break
    progress.close()
    if step < max_steps:  # stopped early on request
        return {"step": step}

    summary = {"step": step, "max_steps": max_steps, "best_val_nll_subset": best_val}
    if is_writer:
        full_val_loader = batch_loader(val_ds, full_val_batches, pad_id, cfg["num_workers"], scored="completion")
        print(f"validation: all {len(val_lengths)} windows in {len(full_val_batches)} batches", file=sys.stderr)
        full_val = tqdm(full_val_loader, desc="validation", unit="batch", **bars)
        summary["val_nll"] = mean_nll(raw_model, full_val, device, autocast)
        summary["unigram_nll"] = unigram_nll(train_ds, val_ds, vocab_size)
        for stream in {sys.stderr, screen}:  # the log, and the console when that is elsewhere
            print(
                f"validation NLL per completion token: {summary['val_nll']:.4f} "
                f"(unigram baseline {summary['unigram_nll']:.4f})",
                file=stream,
            )
        write_json({**info, "step": step, "metrics": summary}, run_dir / "last.json")
        plot_losses(run_dir / "metrics.csv", run_dir / "loss.png", summary["unigram_nll"])
        write_json(summary, run_dir / "done.json")
    if world_size > 1:
        torch.distributed.destroy_process_group()
    return summary


# ----------------------------------------------------------------------------------------------------------------
# Entry points: in-process for one device, torchrun for several


def launch(config: dict, train_dir, val_dir, tokenizer_path, run_dir) -> None:
    """Train on `train.devices` devices: in this process for one, under torchrun (DDP) for more."""
    devices = config["train"]["devices"]
    if devices == 1:
        train(config, train_dir, val_dir, tokenizer_path, run_dir)
        return
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "config.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={devices}",
        "-m",
        "pianomuse.train",
        str(config_path),
        str(train_dir),
        str(val_dir),
        str(tokenizer_path),
        str(run_dir),
    ]
    print(" ".join(command), file=sys.stderr)
    subprocess.run(command, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="One rank of a pianomuse training run (started by torchrun).")
    parser.add_argument("config", help="resolved workflow config (YAML)")
    parser.add_argument("train_dir")
    parser.add_argument("val_dir")
    parser.add_argument("tokenizer")
    parser.add_argument("run_dir")
    args = parser.parse_args()
    config = yaml.safe_load(Path(args.config).read_text())
    train(config, args.train_dir, args.val_dir, args.tokenizer, args.run_dir)


if __name__ == "__main__":
    main()
