# Data stages: MAESTRO source -> tokenizer -> token shards -> transpositions -> bar windows.


def token_shards(split):
    return expand("results/tokens/{split}/shard-{k}.parquet", split=split, k=SHARDS)


def window_sources(wildcards):
    """Train windows read the original shards and their transpositions; validation and test only the originals."""
    shards = token_shards(wildcards.split)
    if wildcards.split == "train":
        shards += expand("results/augment/train/shard-{k}.parquet", k=SHARDS)
    return shards


wildcard_constraints:
    split="|".join(SPLITS),
    k=r"\d+",


rule maestro:
    output:
        manifest="results/maestro/manifest.parquet",
    params:
        maestro_dir=config["maestro_dir"],
        url=config["maestro"]["url"],
        sha256=config["maestro"]["sha256"],
        pieces_per_split=config["maestro"]["pieces_per_split"],
        seed=config["maestro"]["seed"],
    log:
        "results/logs/maestro.log",
    benchmark:
        "results/benchmarks/maestro.tsv"
    conda:
        "../../envs/pianomuse.yaml"
    script:
        "../scripts/maestro.py"


rule tokenizer:
    output:
        "results/tokenizer.json",
    params:
        settings=config["tokenizer"],
    log:
        "results/logs/tokenizer.log",
    benchmark:
        "results/benchmarks/tokenizer.tsv"
    conda:
        "../../envs/pianomuse.yaml"
    script:
        "../scripts/tokenizer.py"


rule tokenize:
    input:
        manifest=rules.maestro.output.manifest,
        tokenizer=rules.tokenizer.output[0],
    output:
        # One job per shard index covers every split: similar loads per job, start-up paid once.
        shards=expand("results/tokens/{split}/shard-{{k}}.parquet", split=SPLITS),
        rejects=expand("results/tokens/{split}/shard-{{k}}.rejects.parquet", split=SPLITS),
    params:
        splits=SPLITS,
        shards=config["tokenize"]["shards"],
    log:
        "results/logs/tokenize/shard-{k}.log",
    benchmark:
        "results/benchmarks/tokenize/shard-{k}.tsv"
    conda:
        "../../envs/pianomuse.yaml"
    script:
        "../scripts/tokenize.py"


rule augment:
    input:
        tokenizer=rules.tokenizer.output[0],
        shard="results/tokens/train/shard-{k}.parquet",
    output:
        shard="results/augment/train/shard-{k}.parquet",
        stats="results/augment/train/shard-{k}.stats.json",
    params:
        transpositions=config["augment"]["transpositions"],
    log:
        "results/logs/augment/train-{k}.log",
    benchmark:
        "results/benchmarks/augment/train-{k}.tsv"
    conda:
        "../../envs/pianomuse.yaml"
    script:
        "../scripts/augment.py"


rule windows:
    input:
        tokenizer=rules.tokenizer.output[0],
        shards=window_sources,
    output:
        dataset=directory("results/windows/{split}"),
        stats="results/windows/{split}.stats.json",
    params:
        context_bars=config["windows"]["context_bars"],
        completion_bars=config["windows"]["completion_bars"],
        step=config["windows"]["step"],
        max_tokens=config["windows"]["max_tokens"],
    log:
        "results/logs/windows/{split}.log",
    benchmark:
        "results/benchmarks/windows/{split}.tsv"
    conda:
        "../../envs/pianomuse.yaml"
    script:
        "../scripts/windows.py"


rule data:
    input:
        expand("results/windows/{split}", split=SPLITS),
