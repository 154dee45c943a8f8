from pianomuse.logs import log_to_file
from pianomuse.tokens import tokenize_shard

log = log_to_file(snakemake.log[0])
stats = tokenize_shard(
    snakemake.input.tokenizer,
    snakemake.input.manifest,
    split=snakemake.wildcards.split,
    shard=int(snakemake.wildcards.k),
    n_shards=snakemake.params.shards,
    shard_path=snakemake.output.shard,
    rejects_path=snakemake.output.rejects,
)
log.info("%s", stats)
