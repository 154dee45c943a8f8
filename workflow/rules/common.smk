# Names and functions shared by all rules files (the splits and shards, each data stage's folder, the training runs)
#
# Each data stage writes into a folder named by a hash of the settings it depends on, its own and those upstream
# (pianomuse.config.data_folders): results/windows/<key>/ for one windows configuration, results/windows/<other>/
# for another. Switching preset or settings and back reruns nothing and deletes nothing; each configuration's
# data stays beside the others'.

import glob
import hashlib
import os

from snakemake.exceptions import WorkflowError

import pianomuse
from pianomuse.config import ConfigError, check_run_data, data_folders, run_data_record
from pianomuse.maestro import SPLITS

SHARDS = range(config["tokenize"]["shards"])

DATA = data_folders(config)
MAESTRO = DATA["maestro"]
TOKENIZER = f"{DATA['tokenizer']}/tokenizer.json"
TOKENS = DATA["tokens"]
AUGMENT = DATA["augment"]
WINDOWS = DATA["windows"]

# The configured run; its checkpoints and report folders.
RUN = config["train"]["run"]
RUN_DIR = f"results/checkpoints/{RUN}"
# Its baselines, trained on the same windows beside it (never over it): the same-size Transformer goes through the
# training rule as run {RUN}-transformer, the n-gram through its own rule.
TRANSFORMER_RUN = f"{RUN}-transformer"
NGRAM_DIR = f"{RUN_DIR}-ngram"
BASELINE_CHECKPOINTS = {
    "transformer": f"results/checkpoints/{TRANSFORMER_RUN}/best.pth",
    "ngram": f"{NGRAM_DIR}/model.npz",
}
BASELINE_DONE = {
    "transformer": f"results/checkpoints/{TRANSFORMER_RUN}/done.json",
    "ngram": f"{NGRAM_DIR}/model.json",
}


def key_of(folder):
    """The settings key that names a data folder (its last part): logs and benchmarks are kept per key too."""
    return folder.rsplit("/", 1)[1]


def run_config(run):
    """The model and train settings of training run `run`: the configured train.run, or its same-size Transformer
    baseline (the same settings but `model.arch`)."""
    if run == RUN:
        return {"model": config["model"], "train": config["train"]}
    if run == TRANSFORMER_RUN:
        return {
            "model": {**config["model"], "arch": "transformer"},
            "train": {**config["train"], "run": run},
        }
    raise WorkflowError(
        f"no training run named {run!r} in this configuration (train.run is {RUN!r}, its baseline {TRANSFORMER_RUN!r})"
    )


def train_inputs(wildcards):
    """The data a run trains on. Checked against what the run folder recorded (data.json) while Snakemake plans
    the jobs, so that a run that cannot resume on this configuration's data fails before anything is rebuilt.
    """
    try:
        check_run_data(
            f"results/checkpoints/{wildcards.run}",
            run_data_record(config),
            run_config(wildcards.run)["model"],
        )
    except ConfigError as error:
        raise WorkflowError(
            f"training run {wildcards.run!r} cannot go on: {error}"
        ) from None
    return {
        "train": f"{WINDOWS}/train",
        "validation": f"{WINDOWS}/validation",
        "tokenizer": TOKENIZER,
    }


def token_shards(split):
    return expand(f"{TOKENS}/{{split}}/shard-{{k}}.parquet", split=split, k=SHARDS)


def window_sources(wildcards):
    """Train windows read the original shards and their transpositions; validation and test only the originals."""
    shards = token_shards(wildcards.split)
    if wildcards.split == "train":
        shards += expand(f"{AUGMENT}/train/shard-{{k}}.parquet", k=SHARDS)
    return shards


def train_gpus(config):
    return 0 if config["train"]["device"] == "cpu" else config["train"]["devices"]


# The kernel sources, the ops and their build and checks, and the stage that checks the whole-model decoding step
# on top of them: those of the pianomuse this workflow imports (a checkout, or an installed wheel).
KERNEL_FILES = sorted(
    path
    for pattern in [
        "kernels/csrc/*",
        "kernels/*.py",
        "kernel_record.py",
        "decode_step.py",
    ]
    for path in glob.glob(os.path.join(os.path.dirname(pianomuse.__file__), pattern))
)


def kernel_files_digest():
    """A hash of the names and contents of KERNEL_FILES: the kernels rule reruns when it changes, wherever the
    package and the workflow live (a moved or copied checkout, with its results/, finds its kernels up to date).
    """
    digest = hashlib.sha256()
    for path in KERNEL_FILES:
        with open(path, "rb") as source:
            digest.update(f"{os.path.basename(path)}\0".encode())
            digest.update(source.read())
    return digest.hexdigest()
