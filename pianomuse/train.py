"""Train RWKV-7 to complete bar windows: resumable, evaluated, deterministic for a given seed.

The loss is the mean NLL of every next-token prediction in each window (`train.loss: window`), or of the completion
tokens only (`completion`: the context is read but never scored, and its hidden states never reach the head).
Validation NLL is always per completion token, so runs with either loss compare. Run it through Snakemake
(`snakemake -c8 train`); with `train.devices > 1` the rule starts it under torchrun and it trains with DDP, each
rank taking its share of the token-budget batches.

The pieces, in the order a run meets them: `TrainSettings` (the `train` section, typed), `Ranks` (the DDP set-up),
`RunData` (the windows and their batches), `TrainingRun` (model, optimiser, resume checks, the loop, the final
validation), and `launch` (in this process, or under torchrun). The optimiser is in `pianomuse.optim`, metrics.csv
and the plot in `pianomuse.run_log`, the checkpoint files in `pianomuse.checkpoint`.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import datasets
import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader
from tqdm import tqdm

from pianomuse.batching import Batch, batch_loader, epoch_batches, pack_by_length, shard_for_rank, window_lengths
from pianomuse.checkpoint import load_resume_point, restore_rng_states, save_resume_point, save_weights
from pianomuse.devices import resolve_device
from pianomuse.files import write_json
from pianomuse.flops import matmul_peak, train_flops
from pianomuse.logs import console
from pianomuse.model import RWKV7Config
from pianomuse.models import LEGACY_ARCH, arch_of, build_model, model_config as arch_config
from pianomuse.optim import make_optimizer
from pianomuse.run_log import LogInterval, MetricsLog, log_line, plot_losses
from pianomuse.scoring import batch_nll, eval_subset, mean_nll, unigram_nll
from pianomuse.tokenizer import load_tokenizer, tokenizer_hash
from pianomuse.transformer import TransformerConfig


@dataclass(frozen=True)
class TrainSettings:
    """config.yaml's `train` section, typed: workflow/schemas/config.schema.yaml documents every key and config.yaml
    holds the defaults, so the fields have none."""

    run: str
    seed: int
    device: str  # auto, cpu or cuda
    devices: int
    loss: str  # window or completion
    max_steps: int | None  # None: epochs x batches per epoch
    epochs: int
    batch_tokens: int
    bucket_windows: int
    lr: float
    min_lr: float
    warmup_steps: int
    weight_decay: float
    betas: tuple[float, float]
    adam_eps: float
    grad_clip: float
    dropout: float
    grad_checkpoint: bool
    eval_every: int
    eval_windows: int
    log_every: int
    checkpoint_every: int
    threads: int
    num_workers: int
    max_nonfinite_steps: int

    @classmethod
    def of(cls, section: dict) -> TrainSettings:
        names = {field.name for field in dataclasses.fields(cls)}
        if set(section) != names:
            unknown, missing = sorted(set(section) - names), sorted(names - set(section))
            raise ValueError(f"train settings: unknown keys {unknown}, missing keys {missing}")
        return cls(**{**section, "betas": tuple(section["betas"])})


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


def train_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: Batch, grad_clip: float,
    autocast: Callable[[], AbstractContextManager], world_size: int,
) -> tuple[float, float, bool]:  # fmt: skip
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
# Set-up: ranks, data, model


@dataclass(frozen=True)
class Ranks:
    """This process's place in a DDP run (rank 0 of 1 without torchrun) and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_writer(self) -> bool:  # rank 0 writes the run folder
        return self.rank == 0

    @classmethod
    def start(cls, device_name: str) -> Ranks:
        """Reads torchrun's environment and joins the process group when there are several ranks."""
        rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        local_rank = int(os.environ["LOCAL_RANK"]) if world_size > 1 else 0
        device = resolve_device(device_name, local_rank)
        if world_size > 1:
            torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
            if device.type == "cuda":
                torch.cuda.set_device(device)
        return cls(rank, world_size, local_rank, device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class RunData:
    """The train and validation windows of a run and their token-budget batches (this rank's share of each epoch)."""

    def __init__(self, settings: TrainSettings, ranks: Ranks, train_dir: str | Path, val_dir: str | Path, pad_id: int):
        self.settings, self.ranks, self.pad_id = settings, ranks, pad_id
        self.train_ds, self.val_ds = datasets.load_from_disk(str(train_dir)), datasets.load_from_disk(str(val_dir))
        self.train_lengths, self.val_lengths = window_lengths(self.train_ds), window_lengths(self.val_ds)
        self.max_steps = settings.max_steps or settings.epochs * len(self.epoch(0))
        eval_windows = eval_subset(self.val_lengths, settings.eval_windows, settings.seed)
        eval_batches = pack_by_length(eval_windows, self.val_lengths, settings.batch_tokens)
        self.eval_loader = self.val_loader(eval_batches)
        all_windows = np.arange(len(self.val_lengths))
        self.full_val_batches = pack_by_length(all_windows, self.val_lengths, settings.batch_tokens)

    def epoch(self, epoch: int) -> list[list[int]]:
        s = self.settings
        batches = epoch_batches(self.train_lengths, s.batch_tokens, s.seed, epoch, s.bucket_windows)
        return shard_for_rank(batches, self.ranks.rank, self.ranks.world_size)

    def train_loader(self, batches: list[list[int]]) -> DataLoader:
        return batch_loader(self.train_ds, batches, self.pad_id, self.settings.num_workers, self.settings.loss)

    def val_loader(self, batches: list[list[int]]) -> DataLoader:
        return batch_loader(self.val_ds, batches, self.pad_id, self.settings.num_workers, scored="completion")


def model_config(config: dict, vocab_size: int) -> RWKV7Config | TransformerConfig:
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
    """SHA-256 over the data files of saved datasets (those their state.json lists, not the cache files that
    `datasets` may write beside them): a run resumes only on the windows it started on."""
    digest = hashlib.sha256()
    for directory in dataset_dirs:
        state = json.loads((Path(directory) / "state.json").read_text())
        for name in sorted(entry["filename"] for entry in state["_data_files"]):
            path = Path(directory) / name
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
    return digest.hexdigest()


def check_resumable(run_dir: Path, state: dict, model_config: dict, fingerprint: str) -> None:
    """Refuses to resume a run of another model, or one that trained on other windows."""
    if state["model_config"] != model_config:
        raise RuntimeError(
            f"{run_dir} holds a run of a different model ({state['model_config']}); "
            "choose another train.run or delete that folder"
        )
    if "windows_fingerprint" not in state:
        warnings.warn(f"{run_dir} was saved without a windows fingerprint (older pianomuse): not checked")
    elif state["windows_fingerprint"] != fingerprint:
        raise RuntimeError(
            f"{run_dir} holds a run trained on other windows (the windows were rebuilt since, e.g. after a "
            "windows/tokenizer/preset change); choose another train.run or delete that folder"
        )


@dataclass
class Position:
    """Where a run is: the step done last, the place in the data, the best validation so far, skipped steps."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_val: float = math.inf
    skipped: int = 0


# ----------------------------------------------------------------------------------------------------------------
# The training run


class TrainingRun:
    """One run in `run_dir`: its model and optimiser, built fresh or resumed from the last checkpoint."""

    def __init__(
        self,
        settings: TrainSettings,
        ranks: Ranks,
        data: RunData,
        model_config: RWKV7Config | TransformerConfig,
        run_dir: Path,
        tokenizer_hash: str,
        fingerprint: str,
    ):
        self.settings, self.ranks, self.data, self.run_dir = settings, ranks, data, run_dir
        device = ranks.device
        compute_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        self.autocast = partial(
            torch.autocast, device_type=device.type, dtype=compute_dtype, enabled=device.type == "cuda"
        )
        # MFU's denominator: this device's matrix-multiply peak in the dtype the products run in, measured once
        # (a 1024^3 product runs near the CPU's peak in ~0.03 s a thread; a GPU needs a larger one to fill it). The
        # best of 10 spans a few tenths of a second, so a moment's load at start-up does not halve it.
        size = 4096 if device.type == "cuda" else 1024
        self.peak_flops = matmul_peak(device, size, repeats=10, dtype=compute_dtype)
        self.model_config = model_config
        self.raw_model = self.model = build_model(model_config).to(device)
        self.optimizer, self.scheduler = make_optimizer(
            self.raw_model, settings.lr, settings.min_lr, settings.warmup_steps, data.max_steps,
            settings.weight_decay, settings.betas, settings.adam_eps,
        )  # fmt: skip
        self.position, self.guard = Position(), NonFiniteGuard(settings.max_nonfinite_steps)
        self.fingerprint = fingerprint  # of the windows: a run resumes only on those it started on
        self.resume()
        if ranks.world_size > 1:
            device_ids = [ranks.local_rank] if device.type == "cuda" else None
            self.model = torch.nn.parallel.DistributedDataParallel(self.raw_model, device_ids=device_ids)
        n_params = sum(p.numel() for p in self.raw_model.parameters())
        self.info = {
            "arch": arch_of(self.raw_model),
            "model": dataclasses.asdict(model_config),
            "tokenizer_hash": tokenizer_hash,
            "n_params": n_params,
        }
        # The bars go to the console (under Snakemake, not the log: that gets one line per log step). Where the
        # console is a file or a pipe (CI), a redraw every 30 s at most keeps it readable.
        self.screen = console()
        self.bars = {
            "disable": not ranks.is_writer,
            "file": self.screen,
            "mininterval": 0.2 if self.screen.isatty() else 30,
        }

    def resume(self) -> None:
        """Continues from the run folder's last checkpoint, if any, after checking that it is this run's."""
        resume = load_resume_point(self.run_dir)
        if resume is None:
            return
        weights, state = resume
        check_resumable(self.run_dir, state, dataclasses.asdict(self.model_config), self.fingerprint)
        self.raw_model.load_state_dict(weights)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.position = Position(
            state["step"], state["epoch"], state["batch_in_epoch"], state["best_val"], state["skipped_steps"]
        )
        self.guard.in_a_row = state["nonfinite_in_a_row"]
        restore_rng_states(state["rng"])
        p = self.position
        print(f"resuming {self.run_dir} at step {p.step} (epoch {p.epoch}, batch {p.batch_in_epoch})", file=sys.stderr)

    def prepare_folder(self, config: dict, tokenizer_path: str | Path) -> None:
        """Rank 0: the run's config and its own tokenizer (a run folder is all `pianomuse complete` needs), the
        metrics log, and a line about the model."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        shutil.copyfile(tokenizer_path, self.run_dir / "tokenizer.json")
        self.metrics = MetricsLog(self.run_dir / "metrics.csv", self.position.step)
        print(
            f"model: {self.info['n_params'] / 1e6:.2f}M parameters, {self.data.max_steps} steps on "
            f"{self.ranks.device} x{self.ranks.world_size} ({torch.get_num_threads()} CPU threads; matmul peak "
            f"{self.peak_flops / 1e9:,.0f} GFLOP/s per device, the denominator of MFU)",
            file=sys.stderr,
        )

    def checkpoint(self, extra_metrics: dict) -> None:
        p = self.position
        state = {
            "step": p.step,
            "epoch": p.epoch,
            "batch_in_epoch": p.batch_in_epoch,
            "best_val": p.best_val,
            "skipped_steps": p.skipped,
            "nonfinite_in_a_row": self.guard.in_a_row,
            "model_config": dataclasses.asdict(self.model_config),
            "windows_fingerprint": self.fingerprint,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }
        save_resume_point(self.raw_model, {**self.info, "step": p.step, "metrics": extra_metrics}, state, self.run_dir)

    def step(self, batch: Batch, batches_in_epoch: int) -> tuple[float, float, bool]:
        """One optimiser step on `batch`, and the run's position after it; returns (loss, grad norm, updated)."""
        s, p = self.settings, self.position
        loss, grad_norm, finite = train_step(
            self.model, self.optimizer, batch, s.grad_clip, self.autocast, self.ranks.world_size
        )
        self.scheduler.step()
        p.step, p.batch_in_epoch = p.step + 1, p.batch_in_epoch + 1
        if p.batch_in_epoch == batches_in_epoch:
            p.epoch, p.batch_in_epoch = p.epoch + 1, 0
        if not finite:
            p.skipped += 1
            print(f"step {p.step}: non-finite loss {loss} / grad norm {grad_norm}, update skipped", file=sys.stderr)
        self.guard.record(finite, p.step)
        return loss, grad_norm, finite

    def validate_subset(self) -> float:
        """Validation NLL on the fixed subset; a new best is saved as best.pth."""
        subset = tqdm(self.data.eval_loader, desc="validation (subset)", unit="batch", leave=False, **self.bars)
        val_nll = mean_nll(self.raw_model, subset, self.ranks.device, self.autocast)
        if val_nll < self.position.best_val:
            self.position.best_val = val_nll
            info = {**self.info, "step": self.position.step, "metrics": {"val_nll": val_nll}}
            save_weights(self.raw_model, info, self.run_dir, "best")
        return val_nll

    def train_until(self, stop_at_step: int | None = None) -> None:
        """Trains to `max_steps`, or stops after `stop_at_step` as a kill after that step's checkpoint would."""
        s, p, data, writer, max_steps = (
            self.settings,
            self.position,
            self.data,
            self.ranks.is_writer,
            self.data.max_steps,
        )
        self.model.train()
        progress = tqdm(total=max_steps, initial=p.step, desc=f"train {self.run_dir.name}", unit="step", **self.bars)
        session_start, session_step = time.perf_counter(), p.step  # for the ETA: this process's pace
        new_interval = partial(LogInterval, self.peak_flops * self.ranks.world_size)
        interval, peak_warned = new_interval(), False
        while p.step < max_steps and (stop_at_step is None or p.step < stop_at_step):
            batches = data.epoch(p.epoch)
            for batch in data.train_loader(batches[p.batch_in_epoch :]):
                batch = batch.to(self.ranks.device)
                lr = self.optimizer.param_groups[0]["lr"]
                loss, grad_norm, finite = self.step(batch, len(batches))
                n = self.ranks.world_size  # ranks train batches of about this one's size
                flops = train_flops(self.model_config, batch.real_tokens, len(batch.targets), batch.inputs.shape[1])
                interval.add(loss, finite, batch.real_tokens * n, batch.inputs.numel() * n, flops * n)
                progress.update(1)
                last = p.step == max_steps
                val_nll = self.validate_subset() if writer and (p.step % s.eval_every == 0 or last) else None
                if writer and (p.step % s.log_every == 0 or val_nll is not None or last):
                    row = interval.row(p.step, p.epoch, lr, val_nll, grad_norm, p.skipped)
                    self.metrics.append(row)
                    mfu = float(row["mfu"])
                    if mfu > 1 and not peak_warned:
                        peak_warned = True
                        warnings.warn(
                            f"MFU {mfu:.0%} at step {p.step}: the matmul peak measured at the start "
                            f"({self.peak_flops / 1e9:,.0f} GFLOP/s) was low, the machine busy then; this run's MFU "
                            "figures are too high"
                        )
                    postfix = {
                        "loss": row["train_loss"],
                        "tok_s": row["tokens_per_s"],
                        "mfu": f"{mfu:.1%}",
                        "val": row["val_nll"] or "-",
                    }
                    progress.set_postfix(postfix, refresh=False)
                    pace = (time.perf_counter() - session_start) / (p.step - session_step)
                    tqdm.write(log_line(row, max_steps, pace), file=sys.stderr)
                    interval = new_interval()
                if writer and (p.step % s.checkpoint_every == 0 or last):
                    self.checkpoint({"val_nll": val_nll, "best_val_nll": p.best_val})
                if last or p.step == stop_at_step:
                    break
        progress.close()

    def finish(self, vocab_size: int) -> dict:
        """The summary of a finished run; rank 0 validates on every window and writes last.json, loss.png and
        done.json (written last: it marks the run finished)."""
        p, data = self.position, self.data
        summary = {"step": p.step, "max_steps": data.max_steps, "best_val_nll_subset": p.best_val}
        if not self.ranks.is_writer:
            return summary
        n_windows, n_batches = len(data.val_lengths), len(data.full_val_batches)
        print(f"validation: all {n_windows} windows in {n_batches} batches", file=sys.stderr)
        full_val = tqdm(data.val_loader(data.full_val_batches), desc="validation", unit="batch", **self.bars)
        summary["val_nll"] = mean_nll(self.raw_model, full_val, self.ranks.device, self.autocast)
        summary["unigram_nll"] = unigram_nll(data.train_ds, data.val_ds, vocab_size)
        for stream in {sys.stderr, self.screen}:  # the log, and the console when that is elsewhere
            print(
                f"validation NLL per completion token: {summary['val_nll']:.4f} "
                f"(unigram baseline {summary['unigram_nll']:.4f})",
                file=stream,
            )
        write_json({**self.info, "step": p.step, "metrics": summary}, self.run_dir / "last.json")
        plot_losses(self.run_dir / "metrics.csv", self.run_dir / "loss.png", summary["unigram_nll"])
        write_json(summary, self.run_dir / "done.json")
        return summary


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
    settings, run_dir = TrainSettings.of(config["train"]), Path(run_dir)
    ranks = Ranks.start(settings.device)
    seed_everything(settings.seed)
    tokenizer = load_tokenizer(tokenizer_path)
    data = RunData(settings, ranks, train_dir, val_dir, tokenizer.pad_token_id)
    fingerprint = windows_fingerprint(train_dir, val_dir)
    mconfig = model_config(config, len(tokenizer.vocab))
    run = TrainingRun(settings, ranks, data, mconfig, run_dir, tokenizer_hash(tokenizer_path), fingerprint)
    if ranks.is_writer:
        run.prepare_folder(config, tokenizer_path)
    run.train_until(stop_at_step)
    if run.position.step < data.max_steps:  # stopped early on request
        return {"step": run.position.step}
    summary = run.finish(len(tokenizer.vocab))
    if ranks.world_size > 1:
        torch.distributed.destroy_process_group()
    return summary


# ----------------------------------------------------------------------------------------------------------------
# Entry points: in-process for one device, torchrun for several


def launch(
    config: dict, train_dir: str | Path, val_dir: str | Path, tokenizer_path: str | Path, run_dir: str | Path
) -> None:
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
