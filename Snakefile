# pianomuse: raw MAESTRO MIDI -> REMI tokens -> bar windows -> RWKV-7 model.
# Each rule is one stage: a thin script under workflow/scripts calling one pianomuse module.

import glob
import os

from snakemake.utils import min_version, validate

from pianomuse.config import SCHEMA, preset_file

min_version("9.0")


# The defaults, then the chosen preset's file (presets/{preset}.yaml) over them. Snakemake merges the command line
# (the --configfile files, then --config) into the config again after each configfile, so it wins over both.
configfile: "config.yaml"
configfile: preset_file(config)


validate(config, SCHEMA)


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/baselines.smk"


rule all:
    default_target: True
    input:
        rules.data.input,
        rules.kernels.output.record,
        f"{RUN_DIR}/done.json",
