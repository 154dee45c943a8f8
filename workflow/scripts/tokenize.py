from pianomuse.startup import skip_torch_import

skip_torch_import()  # before miditok is imported: tokenizing needs no torch (see skip_torch_import)

from pianomuse.logs import log_to_file  # noqa: E402
from pianomuse.tokens import tokenize_shard  # noqa: E402

log = log_to_file(snakemake.log[0])
outputs = dict(zip(snakemake.params.splits, zip(snakemake.output.shards, snakemake.output.rejects)))
stats = tokenize_shard(
    snakemake.input.tokenizer,
    snakemake.input.manifest,
    shard=int(snakemake.wildcards.k),
    n_shards=snakemake.params.shards,
    outputs=outputs,
)
log.info("%s", stats)
