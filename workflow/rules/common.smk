# Parse-time plan: the metadata the run will ingest and the validated conditions. Bad input stops the
# workflow here, before any job starts, with one message naming the file and entry.
import json
import shlex

sys.path.insert(0, SRC)
from morphotrust.subsets.conditions import load_conditions
from morphotrust.data import plan_metadata
from morphotrust.errors import InputError
from morphotrust.generator.layouts import settings_of as external_settings_of
from morphotrust.morphology.scale import scale_of as morphology_scale_of

try:
    METADATA = plan_metadata(config["data"])
    CONDITIONS = load_conditions(config["conditions"], METADATA, config["subsets"]["min_sites_per_condition"])
except InputError as error:
    raise WorkflowError(f"morphotrust: {error}") from None


def cli_json(section):
    """A config section as one shell-quoted JSON argument for `python -m morphotrust ...`."""
    return shlex.quote(json.dumps(section, sort_keys=True))


# During-generation trust runs only for the workflow's own generator; the run summary and `all` ask for it then.
GENERATION_TRUST_SUMMARY = (
    ["results/generation_trust/summary.json"] if config["generated"]["source"] == "generator" else []
)


# With an autoencoder (generator.autoencoder trained | sd-vae), its held-out reconstructions are scored like
# generations: the ceiling of any generator on its latents (ceiling.smk).
# Jobs on the way to the generator's samples go first: on a few cores the CPU-bound training, not CellProfiler,
# sets the wall time, and CellProfiler's real-site jobs fill the other cores meanwhile.
GENERATOR_PATH = 10
# External generations (generated.external, morphotrust.generator.layouts) with the preset's values filled in. When
# they need the real reference rebuilt like them (a composite mapping, another resolution, crops), the real features
# are computed on results/generated/external/reference/{split}.npy (features.smk); the autoencoder's ceiling, made
# at subsets.resolution in six stains, is then not comparable and not run.
EXTERNAL_SETTINGS = external_settings_of(config["generated"]["external"], config["subsets"]["resolution"])
EXTERNAL_REFERENCE = config["generated"]["source"] == "external" and EXTERNAL_SETTINGS.derived_reference(
    config["subsets"]["resolution"]
)
# CellProfiler validation needs six-stain whole sites (not composites, not crops): otherwise not applicable.
CELLPROFILER_APPLICABLE = config["generated"]["source"] != "external" or EXTERNAL_SETTINGS.cellprofiler_applicable
CEILING = (
    ["results/ceiling/ceiling.json"] if config["generator"]["autoencoder"] != "none" and not EXTERNAL_REFERENCE else []
)


def shard_paths(pattern, shards, **wildcards):
    """The shard outputs a merging job reads when a stage is split into `shards` > 1 jobs (none for 1)."""
    return expand(pattern, shard=range(shards), **wildcards) if shards > 1 else []


def merge_option(wildcards, input):
    """`--merge SHARD_TABLE ...` for a job that merges its shards' tables; nothing for an unsharded one."""
    return f"--merge {' '.join(input.shards)}" if input.shards else ""


def autoencoder_option(wildcards, input):
    """`--autoencoder results/autoencoder/autoencoder.json` for the generator jobs on latents (generator.autoencoder
    trained | sd-vae); nothing in pixel space."""
    return f"--autoencoder {input.autoencoder}" if config["generator"]["autoencoder"] != "none" else ""
