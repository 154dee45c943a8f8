from pianomuse.kernels.build import build_kernels, write_record
from pianomuse.logs import log_to_file

log = log_to_file(snakemake.log[0])
record = build_kernels(snakemake.output.build, verbose=True)
write_record(record, snakemake.output.record)
log.info("%s", record)
