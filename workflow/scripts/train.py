import os

from pianomuse.logs import log_to_file
from pianomuse.train import launch

log = log_to_file(snakemake.log[0])
# Load the WKV-7 kernels that the kernels rule built and checked, rather than compiling them again.
os.environ["PIANOMUSE_KERNEL_DIR"] = os.path.abspath(snakemake.input.kernel_build)
config = {**snakemake.config, "model": snakemake.params.model, "train": snakemake.params.train}
launch(config, snakemake.input.train, snakemake.input.validation, snakemake.input.tokenizer, snakemake.params.run_dir)
