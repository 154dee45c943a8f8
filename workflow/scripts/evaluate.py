from pathlib import Path

import torch

from pianomuse.evaluate import evaluate_checkpoint
from pianomuse.kernels.build import use_recorded_kernels
from pianomuse.logs import log_to_file

log = log_to_file(snakemake.log[0])
use_recorded_kernels(snakemake.input.kernels)
torch.set_num_threads(snakemake.threads)
params = snakemake.params
evaluate_checkpoint(
    params.settings,
    params.completion_bars,
    params.device,
    params.batch_tokens,
    params.run_dir,
    params.baselines,
    snakemake.input.train,
    snakemake.input.test,
    params.eval_dir,
    Path(snakemake.input.probe).parent,
)
