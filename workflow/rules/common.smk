# Parse-time plan: the metadata the run will ingest and the validated conditions. Bad input stops the
# workflow here, before any job starts, with one message naming the file and entry.
import json
import shlex

sys.path.insert(0, SRC)
from morphotrust.subsets.conditions import load_conditions
from morphotrust.config import generation_plan
from morphotrust.data import plan_metadata
from morphotrust.errors import InputError
from morphotrust.generated.external import check_planned as check_planned_external

try:
    METADATA = plan_metadata(config["data"])
    CONDITIONS = load_conditions(config["conditions"], METADATA, config["subsets"]["min_sites_per_condition"])
except InputError as error:
    raise WorkflowError(f"morphotrust: {error}") from None


def cli_json(section):
    """A config section as one shell-quoted JSON argument for `python -m morphotrust ...`."""
    return shlex.quote(json.dumps(section, sort_keys=True))


# The generation rules' derived values (morphotrust.config.generation_plan, which says what each one means), under
# the names every rule file uses.
GENERATION = generation_plan(config)
GENERATOR = config["generator"]
# During-generation trust runs only for the workflow's own generator; the run summary and `all` ask for it then.
GENERATION_TRUST_SUMMARY = GENERATION["generation_trust_summary"]
# The autoencoder's ceiling (ceiling.smk), when its held-out reconstructions are comparable with the generations.
CEILING = GENERATION["ceiling"]
# External generations (generated.external) with the preset's values filled in; EXTERNAL_REFERENCE: the real
# features are computed on results/generated/external/reference/{split}.npy, rebuilt like them (features.smk).
EXTERNAL_SETTINGS = GENERATION["external_settings"]
EXTERNAL_REFERENCE = GENERATION["external_reference"]
# CellProfiler validation needs six-stain whole sites (not composites, not crops): otherwise not applicable.
CELLPROFILER_APPLICABLE = GENERATION["cellprofiler_applicable"]
# Jobs on the way to the generator's samples go first: on a few cores the CPU-bound training, not CellProfiler,
# sets the wall time, and CellProfiler's real-site jobs fill the other cores meanwhile.
GENERATOR_PATH = 10

# generated.source external: every manifest / pattern problem stops the plan, also `snakemake -n`, by line or path.
try:
    check_planned_external(config, EXTERNAL_SETTINGS, METADATA, CONDITIONS)
except InputError as error:
    raise WorkflowError(f"morphotrust: {error}") from None


def shard_paths(pattern, shards, **wildcards):
    """The shard outputs a merging job reads when a stage is split into `shards` > 1 jobs (none for 1)."""
    return expand(pattern, shard=range(shards), **wildcards) if shards > 1 else []


def merge_option(wildcards, input):
    """`--merge SHARD_TABLE ...` for a job that merges its shards' tables; nothing for an unsharded one."""
    return f"--merge {' '.join(input.shards)}" if input.shards else ""


def autoencoder_option(wildcards, input):
    """`--autoencoder results/autoencoder/autoencoder.json` for the generator jobs on latents (their input
    GENERATION["autoencoder_json"]); nothing in pixel space."""
    return f"--autoencoder {input.autoencoder}" if input.autoencoder else ""
