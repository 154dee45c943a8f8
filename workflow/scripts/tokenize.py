import sys

# miditok imports torch when it is installed, for data loaders tokenizing does not use; that import would
# cost every shard job a second or two of start-up.
sys.modules["torch"] = None

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
