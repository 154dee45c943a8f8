import json

from pianomuse.augment import Loops, ScoreLike, augment_shard
from pianomuse.logs import log_to_file

log = log_to_file(snakemake.log[0])
loops, score_like = snakemake.params.loops, snakemake.params.score_like
stats = augment_shard(
    snakemake.input.tokenizer,
    snakemake.input.shard,
    snakemake.params.transpositions,
    snakemake.output.shard,
    Loops(**loops) if loops else None,
    ScoreLike(**score_like) if score_like else None,
)
with open(snakemake.output.stats, "w") as f:
    json.dump(stats, f, indent=2)
log.info("%s", stats)
