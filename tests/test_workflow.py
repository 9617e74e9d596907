"""The Snakemake workflow itself: lint, the complete DAG, conda envs, bad config, and the demo end to end."""

import re
import sys

import pandas as pd
import pytest
import yaml

from workflow_helpers import REPO, make_workdir, run_snakemake


def test_lint(tmp_path):
    result = run_snakemake(make_workdir(tmp_path), "--lint", check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dry_run_builds_complete_dag(tmp_path):
    result = run_snakemake(make_workdir(tmp_path), "-n", "--quiet", "rules")
    assert "all" in result.stdout
    for rule in ("ingest_plate", "subsets", "subset_stack"):
        assert rule in result.stdout, result.stdout


def _rule_blocks():
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        text = smk.read_text()
        for match in re.finditer(r"^rule (\w+):\n(.*?)(?=^rule |\Z)", text, flags=re.M | re.S):
            yield smk, match.group(1), match.group(2)


def test_every_rule_has_a_pinned_conda_env():
    rules = list(_rule_blocks())
    assert len(rules) >= 5
    for smk, name, body in rules:
        if "shell:" not in body:  # run:-less aggregation rules have nothing to execute
            continue
        conda = re.search(r'conda:\s*\n\s*"([^"]+)"', body)
        assert conda, f"rule {name} in {smk.name} has no conda: directive"
        env_file = (smk.parent / conda.group(1)).resolve()
        assert env_file.is_file(), f"rule {name}: conda env {env_file} does not exist"
        env = yaml.safe_load(env_file.read_text())
        assert env.get("channels") and env.get("dependencies"), env_file
        for dependency in env["dependencies"]:
            entries = dependency["pip"] if isinstance(dependency, dict) else [dependency]
            for entry in entries:
                assert re.search(r"[^=<>]==?\d", entry), f"{env_file.name}: {entry!r} is not pinned"


def test_bad_conditions_stop_before_any_job(tmp_path):
    workdir = make_workdir(tmp_path)
    conditions = workdir / "config" / "conditions.yaml"
    conditions.write_text(conditions.read_text().replace("cell_type: HUVEC", "cell_type: HUVECS", 1))
    result = run_snakemake(workdir, "-n", check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "conditions.yaml" in output and "unknown cell type 'HUVECS'" in output, output
    assert not (workdir / "results").exists()


def test_bad_config_key_stops(tmp_path):
    workdir = make_workdir(tmp_path, **{"subsets.max_sites_per_conditon": 3})
    result = run_snakemake(workdir, "-n", check=False)
    assert result.returncode != 0
    assert "max_sites_per_conditon" in result.stdout + result.stderr


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    """The whole workflow on a small demo, then a rerun that has nothing left to do."""
    workdir = make_workdir(tmp_path)
    run_snakemake(workdir, "--cores", "2")
    results = workdir / "results"
    manifest = pd.read_parquet(results / "subsets" / "manifest.parquet")
    assert set(manifest["Metadata_arm"]) >= {"seen", "unseen"}
    train = manifest[manifest["Metadata_split"] == "train"]
    assert set(train["Metadata_arm"]) <= {"seen", "control"}
    assert (results / "data" / "demo_grid.png").stat().st_size > 10_000
    sites = pd.read_parquet(results / "data" / "sites.parquet")
    assert sites["Metadata_synthetic"].all()
    rerun = run_snakemake(workdir, "--cores", "2", "-n")
    assert "Nothing to be done" in rerun.stdout + rerun.stderr


def test_every_config_key_is_documented():
    sys.path.insert(0, str(REPO / "scripts"))
    import config_docs

    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    assert config_docs.undocumented(schema["properties"]) == []
    assert (REPO / "config" / "README.md").read_text() == config_docs.render(), \
        "config/README.md is out of date: run .venv/bin/python scripts/config_docs.py"

    def keys(mapping, prefix=""):
        for name, value in mapping.items():
            yield f"{prefix}{name}"
            if isinstance(value, dict):
                yield from keys(value, f"{prefix}{name}.")

    def schema_keys(properties, prefix=""):
        for name, spec in properties.items():
            yield f"{prefix}{name}"
            yield from schema_keys(spec.get("properties", {}), f"{prefix}{name}.")

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    documented = set(schema_keys(schema["properties"]))
    assert [k for k in keys(config) if k not in documented and not k.startswith("subsets.split_fractions.")] == []
