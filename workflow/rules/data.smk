# Data stages: MAESTRO source -> tokenizer -> token shards -> transpositions -> bar windows, each in the folder of
# its settings (common.smk); logs and benchmarks are kept per folder too.


wildcard_constraints:
    split="|".join(SPLITS),
    k=r"\d+",


rule maestro:
    output:
        manifest=f"{MAESTRO}/manifest.parquet",
    log:
        f"results/logs/maestro/{key_of(MAESTRO)}.log",
    benchmark:
        f"results/benchmarks/maestro/{key_of(MAESTRO)}.tsv"
    conda:
        "../../envs/pianomuse.yaml"
    params:
        # maestro_dir, url and sha256 say where MAESTRO v3.0.0 comes from, not what it is: the script reads them
        # from the config, so that moving the MAESTRO folder reruns nothing.
        pieces_per_split=config["maestro"]["pieces_per_split"],
        seed=config["maestro"]["seed"],
    script:
        "../scripts/maestro.py"


rule tokenizer:
    output:
        TOKENIZER,
    log:
        f"results/logs/tokenizer/{key_of(DATA['tokenizer'])}.log",
    benchmark:
        f"results/benchmarks/tokenizer/{key_of(DATA['tokenizer'])}.tsv"
    conda:
        "../../envs/pianomuse.yaml"
    params:
        settings=config["tokenizer"],
    script:
        "../scripts/tokenizer.py"


rule tokenize:
    input:
        manifest=rules.maestro.output.manifest,
        tokenizer=rules.tokenizer.output[0],
    output:
        # One job per shard index covers every split: similar loads per job, start-up paid once.
        shards=expand(f"{TOKENS}/{{split}}/shard-{{{{k}}}}.parquet", split=SPLITS),
        rejects=expand(
            f"{TOKENS}/{{split}}/shard-{{{{k}}}}.rejects.parquet", split=SPLITS
        ),
    log:
        f"results/logs/tokenize/{key_of(TOKENS)}/shard-{{k}}.log",
    benchmark:
        f"results/benchmarks/tokenize/{key_of(TOKENS)}/shard-{{k}}.tsv"
    conda:
        "../../envs/pianomuse.yaml"
    params:
        splits=SPLITS,
        shards=config["tokenize"]["shards"],
    script:
        "../scripts/tokenize.py"


rule augment:
    input:
        tokenizer=rules.tokenizer.output[0],
        shard=f"{TOKENS}/train/shard-{{k}}.parquet",
    output:
        shard=f"{AUGMENT}/train/shard-{{k}}.parquet",
        stats=f"{AUGMENT}/train/shard-{{k}}.stats.json",
    log:
        f"results/logs/augment/{key_of(AUGMENT)}/train-{{k}}.log",
    benchmark:
        f"results/benchmarks/augment/{key_of(AUGMENT)}/train-{{k}}.tsv"
    conda:
        "../../envs/pianomuse.yaml"
    params:
        transpositions=config["augment"]["transpositions"],
        loops=config["augment"]["loops"],
        score_like=config["augment"]["score_like"],
    script:
        "../scripts/augment.py"


rule windows:
    input:
        tokenizer=rules.tokenizer.output[0],
        shards=window_sources,
    output:
        dataset=directory(f"{WINDOWS}/{{split}}"),
        stats=f"{WINDOWS}/{{split}}.stats.json",
    log:
        f"results/logs/windows/{key_of(WINDOWS)}/{{split}}.log",
    benchmark:
        f"results/benchmarks/windows/{key_of(WINDOWS)}/{{split}}.tsv"
    conda:
        "../../envs/pianomuse.yaml"
    params:
        context_bars=config["windows"]["context_bars"],
        completion_bars=config["windows"]["completion_bars"],
        step=config["windows"]["step"],
        max_tokens=config["windows"]["max_tokens"],
        # Recorded in the stats: the settings, upstream ones included, this folder was built from.
        data_settings=run_data_record(config)["settings"],
    script:
        "../scripts/windows.py"


rule data:
    input:
        expand(f"{WINDOWS}/{{split}}", split=SPLITS),
