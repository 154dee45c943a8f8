# Baselines trained on the run's windows, each beside the run's checkpoints and never over them:
#   the same-size Transformer  the train_run rule itself, as run {train.run}-transformer (see run_config)
#   ngram                      the Kneser-Ney n-gram, its order chosen on validation -> results/checkpoints/{run}-ngram/
# `snakemake baselines` builds both.


rule ngram:
    input:
        train=f"{WINDOWS}/train",
        validation=f"{WINDOWS}/validation",
        tokenizer=TOKENIZER,
    output:
        model=BASELINE_CHECKPOINTS["ngram"],
        info=BASELINE_DONE["ngram"],
    log:
        f"results/logs/ngram/{RUN}.log",
    benchmark:
        f"results/benchmarks/ngram/{RUN}.tsv"
    conda:
        "../../envs/pianomuse.yaml"
    threads: 1  # counting is numpy sorts: one core
    params:
        out_dir=lambda wildcards, output: os.path.dirname(output.model),
        settings=config["ngram"],
        seed=config["train"]["seed"],
    script:
        "../scripts/ngram.py"


localrules:
    baselines,


rule baselines:
    input:
        BASELINE_DONE.values(),
