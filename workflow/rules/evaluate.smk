# Evaluation of the run's best checkpoint: the pattern continuation probe -> results/probe/{train.run}/
# (`snakemake probe`), and the test windows -> results/eval/{train.run}/ (`snakemake evaluate`), whose report
# includes the probe's tables and piano rolls.

EVAL_DIR = f"results/eval/{RUN}"
PROBE_DIR = f"results/probe/{RUN}"
# The baselines sampled and scored beside the run (evaluate.baselines).
BASELINES = config["evaluate"]["baselines"]


rule probe:
    input:
        done=f"{RUN_DIR}/done.json",
        baselines=[BASELINE_DONE[name] for name in BASELINES],
        kernels=rules.kernels.output.record,
    output:
        results=f"{PROBE_DIR}/probe.json",
        report=f"{PROBE_DIR}/probe.md",
        html=f"{PROBE_DIR}/probe.html",
        prompts=directory(f"{PROBE_DIR}/prompts"),
    log:
        f"results/logs/probe/{RUN}.log",
    benchmark:
        f"results/benchmarks/probe/{RUN}.tsv"
    conda:
        "../../envs/pianomuse.yaml"
    threads: 1  # one token of K samples at a time: too little work to share between threads
    resources:
        gpu=min(train_gpus(config), 1),
    params:
        checkpoints=[f"{RUN_DIR}/best.pth"]
        + [BASELINE_CHECKPOINTS[name] for name in BASELINES],
        settings=config["probe"],
        device=config["train"]["device"],
    script:
        "../scripts/probe.py"


rule evaluate:
    input:
        done=f"{RUN_DIR}/done.json",
        baselines=[BASELINE_DONE[name] for name in BASELINES],
        train=f"{WINDOWS}/train",
        test=f"{WINDOWS}/test",
        kernels=rules.kernels.output.record,
        probe=rules.probe.output.results,
    output:
        report=f"{EVAL_DIR}/report.md",
        html=f"{EVAL_DIR}/report.html",
        metrics=f"{EVAL_DIR}/metrics.json",
        samples=directory(f"{EVAL_DIR}/samples"),
    log:
        f"results/logs/evaluate/{RUN}.log",
    benchmark:
        f"results/benchmarks/evaluate/{RUN}.tsv"
    conda:
        "../../envs/pianomuse.yaml"
    threads: 1  # one token of K samples at a time: too little work to share between threads
    resources:
        gpu=min(train_gpus(config), 1),  # one device is plenty to sample K streams
    params:
        run_dir=lambda wildcards, input: os.path.dirname(input.done),
        baselines=[BASELINE_CHECKPOINTS[name] for name in BASELINES],
        eval_dir=lambda wildcards, output: os.path.dirname(output.metrics),
        settings=config["evaluate"],
        completion_bars=config["windows"]["completion_bars"],
        device=config["train"]["device"],
        batch_tokens=config["train"]["batch_tokens"],
    script:
        "../scripts/evaluate.py"
