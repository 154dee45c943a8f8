import os

import torch

from pianomuse.evaluate import evaluate_run
from pianomuse.logs import log_to_file

log = log_to_file(snakemake.log[0])
# Load the WKV-7 kernels that the kernels rule built and checked, rather than compiling them again.
os.environ["PIANOMUSE_KERNEL_DIR"] = os.path.abspath(snakemake.input.kernel_build)
torch.set_num_threads(snakemake.threads)
params = snakemake.params
evaluate_run(
    params.settings, params.completion_bars, params.device, params.batch_tokens,
    params.run_dir, snakemake.input.train, snakemake.input.test, params.eval_dir,
)
