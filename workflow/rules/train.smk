# Training: bar windows -> RWKV-7 checkpoints in results/checkpoints/{run}/ (today the run is train.run; see
# run_config in common.smk).
#
# Resuming: last.pth and last.state.pt are deliberately not outputs, so Snakemake never deletes them when a job
# fails or is killed; rerunning the rule (after a kill -9 of Snakemake itself: `--unlock`, then the same command,
# which reruns the incomplete job) continues from them. Only done.json, written last, marks a finished run.


wildcard_constraints:
    run=r"[A-Za-z0-9_.-]+",


rule train_run:
    input:
        unpack(train_inputs),
        kernels=rules.kernels.output.record,
    output:
        done="results/checkpoints/{run}/done.json",
    log:
        "results/logs/train/{run}.log",
    benchmark:
        "results/benchmarks/train/{run}.tsv"
    conda:
        "../../envs/pianomuse.yaml"
    # torch computes with the rule's threads: train.threads, lowered by Snakemake to the cores it was given (-c).
    threads: lambda wildcards: run_config(wildcards.run)["train"]["threads"]
    resources:
        gpu=lambda wildcards: train_gpus(run_config(wildcards.run)),
    params:
        run_dir=lambda wildcards, output: os.path.dirname(output.done),
        model=lambda wildcards: run_config(wildcards.run)["model"],
        train=lambda wildcards: run_config(wildcards.run)["train"],
        data=run_data_record(config),
    message:
        "training run {wildcards.run} on {input.train}: progress below, one line per log step in {log}"
    script:
        "../scripts/train.py"


localrules:
    train,


rule train:  # the target `snakemake train`: the configured run
    input:
        f"{RUN_DIR}/done.json",
