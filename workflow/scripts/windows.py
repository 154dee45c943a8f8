import json

from pianomuse.logs import log_to_file
from pianomuse.windows import build_windows

log = log_to_file(snakemake.log[0])
params = snakemake.params
stats = build_windows(
    snakemake.input.tokenizer,
    list(snakemake.input.shards),
    context_bars=params.context_bars,
    completion_bars=params.completion_bars,
    step=params.step,
    max_tokens=params.max_tokens,
    out_dir=snakemake.output.dataset,
)
with open(snakemake.output.stats, "w") as f:
    json.dump({**stats, "settings": params.data_settings}, f, indent=2)
log.info("%s", stats)
