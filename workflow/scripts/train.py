from pianomuse.kernels.build import use_recorded_kernels
from pianomuse.logs import log_to_file
from pianomuse.train import launch

log = log_to_file(snakemake.log[0])
use_recorded_kernels(snakemake.input.kernels)
config = {**snakemake.config, "model": snakemake.params.model, "train": snakemake.params.train}
launch(config, snakemake.input.train, snakemake.input.validation, snakemake.input.tokenizer, snakemake.params.run_dir)
