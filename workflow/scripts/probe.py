from pathlib import Path

import torch

from pianomuse.complete import Sampling
from pianomuse.kernels.build import use_recorded_kernels
from pianomuse.logs import log_to_file
from pianomuse.probe import probe_checkpoint

log = log_to_file(snakemake.log[0])
use_recorded_kernels(snakemake.input.kernels)
torch.set_num_threads(snakemake.threads)
params = snakemake.params
out_dir = Path(snakemake.output.results).parent
probe_checkpoint(params.checkpoints, None, Sampling(**params.settings), params.device, out_dir)
