from pianomuse.logs import log_to_file
from pianomuse.maestro import MAESTRO_V3_MIDI_SHA256, ensure_maestro, read_metadata, write_manifest

log = log_to_file(snakemake.log[0])
params = snakemake.params
source = snakemake.config["maestro"]  # where MAESTRO comes from; not a param, see the rule
maestro_dir = ensure_maestro(snakemake.config["maestro_dir"], source["url"], source["sha256"] or MAESTRO_V3_MIDI_SHA256)
metadata = read_metadata(maestro_dir, pieces_per_split=params.pieces_per_split, seed=params.seed)
write_manifest(metadata, snakemake.output.manifest)
log.info("manifest of %d pieces from %s: %s", len(metadata), maestro_dir, metadata["split"].value_counts().to_dict())
