# Evaluation: the run's best checkpoint on the test windows -> results/eval/{train.run}/ (`snakemake evaluate`).

EVAL_DIR = f"results/eval/{RUN}"


rule evaluate:
    input:
        done=f"{RUN_DIR}/done.json",
        train=f"{WINDOWS}/train",
        test=f"{WINDOWS}/test",
        kernels=rules.kernels.output.record,
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
