import torch

from pianomuse.config import record_run_data
from pianomuse.kernels.build import use_recorded_kernels
from pianomuse.logs import log_to_file
from pianomuse.train import launch

log = log_to_file(snakemake.log[0])
use_recorded_kernels(snakemake.input.kernels)
torch.set_num_threads(snakemake.threads)
params = snakemake.params
record_run_data(params.run_dir, params.data, params.model)
config = {**snakemake.config, "model": params.model, "train": params.train}
launch(config, snakemake.input.train, snakemake.input.validation, snakemake.input.tokenizer, params.run_dir)
