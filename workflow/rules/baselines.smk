# Baselines trained on the run's windows, each beside the run's checkpoints and never over them:
#   train_transformer  the same-size Transformer, through the train rule itself -> results/checkpoints/{run}-transformer/
#   ngram              the Kneser-Ney n-gram, its order chosen on validation     -> results/checkpoints/{run}-ngram/
# `snakemake baselines` builds both.

TRANSFORMER_DIR = f"{RUN_DIR}-transformer"
NGRAM_DIR = f"{RUN_DIR}-ngram"


use rule train as train_transformer with:
    output:
        done=f"{TRANSFORMER_DIR}/done.json",
    params:
        run_dir=TRANSFORMER_DIR,
        model={**config["model"], "arch": "transformer"},
        train=config["train"],
    log:
        f"results/logs/train/{config['train']['run']}-transformer.log",
    benchmark:
        f"results/benchmarks/train/{config['train']['run']}-transformer.tsv"


rule ngram:
    input:
        train="results/windows/train",
        validation="results/windows/validation",
        tokenizer=rules.tokenizer.output[0],
    output:
        model=f"{NGRAM_DIR}/model.npz",
        info=f"{NGRAM_DIR}/model.json",
    params:
        out_dir=NGRAM_DIR,
        settings=config["ngram"],
        seed=config["train"]["seed"],
    threads: 1  # counting is numpy sorts: one core
    log:
        f"results/logs/ngram/{config['train']['run']}.log",
    benchmark:
        f"results/benchmarks/ngram/{config['train']['run']}.tsv"
    conda:
        "../../envs/pianomuse.yaml"
    script:
        "../scripts/ngram.py"


rule baselines:
    input:
        rules.train_transformer.output.done,
        rules.ngram.output.info,
