# Evaluation of the run's best checkpoint: the pattern continuation probe -> results/probe/{train.run}/
# (`snakemake probe`), and the test windows -> results/eval/{train.run}/ (`snakemake evaluate`), whose report
# includes the probe's tables and piano rolls.

EVAL_DIR = f"results/eval/{config['train']['run']}"
PROBE_DIR = f"results/probe/{config['train']['run']}"


rule probe:
    input:
        done=rules.train.output.done,
        kernels=rules.kernels.output.record,
    output:
        results=f"{PROBE_DIR}/probe.json",
        report=f"{PROBE_DIR}/probe.md",
        html=f"{PROBE_DIR}/probe.html",
        prompts=directory(f"{PROBE_DIR}/prompts"),
    params:
        checkpoint=f"{RUN_DIR}/best.pth",
        settings=config["probe"],
        device=config["train"]["device"],
    threads: 1  # one token of K samples at a time: too little work to share between threads
    resources:
        gpu=min(train_gpus(config), 1),
    log:
        f"results/logs/probe/{config['train']['run']}.log",
    benchmark:
        f"results/benchmarks/probe/{config['train']['run']}.tsv"
    conda:
        "../../envs/pianomuse.yaml"
    script:
        "../scripts/probe.py"


rule evaluate:
    input:
        done=rules.train.output.done,
        train="results/windows/train",
        test="results/windows/test",
        kernels=rules.kernels.output.record,
        probe=rules.probe.output.results,
    output:
        report=f"{EVAL_DIR}/report.md",
        html=f"{EVAL_DIR}/report.html",
        metrics=f"{EVAL_DIR}/metrics.json",
        samples=directory(f"{EVAL_DIR}/samples"),
    params:
        run_dir=RUN_DIR,
        eval_dir=EVAL_DIR,
        settings=config["evaluate"],
        completion_bars=config["windows"]["completion_bars"],
        device=config["train"]["device"],
        batch_tokens=config["train"]["batch_tokens"],
    threads: 1  # one token of K samples at a time: too little work to share between threads
    resources:
        gpu=min(train_gpus(config), 1),  # one device is plenty to sample K streams
    log:
        f"results/logs/evaluate/{config['train']['run']}.log",
    benchmark:
        f"results/benchmarks/evaluate/{config['train']['run']}.tsv"
    conda:
        "../../envs/pianomuse.yaml"
    script:
        "../scripts/evaluate.py"
