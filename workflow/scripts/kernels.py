import json

from pianomuse.files import write_json
from pianomuse.kernel_record import build_kernels
from pianomuse.kernels.build import default_build_dir
from pianomuse.logs import log_to_file

log = log_to_file(snakemake.log[0])  # the compiler's lines land there too, not on the console
build_dir = default_build_dir()
log.info("building the kernels in %s", build_dir)
record = build_kernels(build_dir, verbose=True)
write_json(record, snakemake.output.record)
for kernel in record["kernels"]:
    log.info(
        "%s on %s: checks %s (%s), built with %s into %s",
        kernel["name"],
        kernel["device"],
        "passed" if kernel["passed"] else "FAILED",
        ", ".join(check["kernel"] for check in kernel["checks"]),
        kernel["compiler"],
        kernel["path"],
    )
log.info("record (%s):\n%s", snakemake.output.record, json.dumps(record, indent=2))
