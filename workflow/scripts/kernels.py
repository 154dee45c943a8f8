from pianomuse.kernels.build import build_kernels, default_build_dir, write_record
from pianomuse.logs import log_to_file

log = log_to_file(snakemake.log[0])
record = build_kernels(default_build_dir(), verbose=True)
write_record(record, snakemake.output.record)
log.info("%s", record)
