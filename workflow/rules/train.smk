# Training: bar windows -> RWKV-7 checkpoints in results/checkpoints/{train.run}/.
#
# Resuming: last.pth and last.state.pt are deliberately not outputs, so Snakemake never deletes them when a job
# fails or is killed; rerunning the rule (after a kill -9 of Snakemake itself: `--unlock`, then the same command,
# which reruns the incomplete job) continues from them. Only done.json, written last, marks a finished run.

RUN_DIR = f"results/checkpoints/{config['train']['run']}"


def train_gpus(config):
    return 0 if config["train"]["device"] == "cpu" else config["train"]["devices"]


rule train:
    input:
        train="results/windows/train",
        validation="results/windows/validation",
        tokenizer=rules.tokenizer.output[0],
        kernels=rules.kernels.output.record,
    output:
        done=f"{RUN_DIR}/done.json",
    params:
        run_dir=RUN_DIR,
        model=config["model"],
        train=config["train"],
    threads: config["train"]["num_workers"] + 1
    resources:
        gpu=train_gpus(config),
    log:
        f"results/logs/train/{config['train']['run']}.log",
    benchmark:
        f"results/benchmarks/train/{config['train']['run']}.tsv"
    conda:
        "../../envs/pianomuse.yaml"
    script:
        "../scripts/train.py"
