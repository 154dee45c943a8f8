from pianomuse.logs import log_to_file
from pianomuse.ngram import fit_ngram

log = log_to_file(snakemake.log[0])
settings = snakemake.params.settings
fit_ngram(
    snakemake.input.train,
    snakemake.input.validation,
    snakemake.input.tokenizer,
    snakemake.params.out_dir,
    settings["orders"],
    settings["max_windows"],
    settings["validation_windows"],
    snakemake.params.seed,
)
