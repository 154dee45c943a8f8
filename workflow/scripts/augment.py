import json

from pianomuse.augment import Loops, augment_shard
from pianomuse.logs import log_to_file

log = log_to_file(snakemake.log[0])
loops = snakemake.params.loops
stats = augment_shard(
    snakemake.input.tokenizer,
    snakemake.input.shard,
    snakemake.params.transpositions,
    snakemake.output.shard,
    Loops(**loops) if loops else None,
)
with open(snakemake.output.stats, "w") as f:
    json.dump(stats, f, indent=2)
log.info("%s", stats)
