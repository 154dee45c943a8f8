from pianomuse.logs import log_to_file
from pianomuse.tokenizer import build_tokenizer, save_tokenizer

log = log_to_file(snakemake.log[0])
tokenizer = build_tokenizer(**snakemake.params.settings)
save_tokenizer(tokenizer, snakemake.output[0])
log.info("REMI tokenizer with %d tokens", len(tokenizer))
