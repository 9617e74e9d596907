"""The Snakemake workflow itself: lint, the complete DAG, conda envs, bad config, and the demo end to end."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
import pytest
import yaml

from morphotrust.images import read_site, write_site

from workflow_helpers import REPO, SNAKEMAKE, TINY_DEMO, make_workdir, run_snakemake


def test_lint(tmp_path):
    result = run_snakemake(make_workdir(tmp_path), "--lint", check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_snakefmt_check():
    """The Snakefile and rule files are formatted by snakefmt (line length in pyproject.toml)."""
    snakefmt = os.path.join(os.path.dirname(sys.executable), "snakefmt")
    result = subprocess.run([snakefmt, "--check", "--diff", str(REPO / "workflow")], capture_output=True,
                            text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


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


def test_an_unwritable_results_folder_is_one_line_before_any_job(tmp_path):
    """Issue 26: a read-only results folder (a read-only mount, as root; otherwise a file in its place) stops the
    run at once with one line naming it, not a Snakemake traceback."""
    workdir = make_workdir(tmp_path)
    results = workdir / "results"
    results.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(results)],
                                                   capture_output=True).returncode == 0
    if not mounted:
        results.rmdir()
        results.write_text("")
    try:
        result = run_snakemake(workdir, "--cores", "1", check=False)
    finally:
        if mounted:
            subprocess.run(["umount", str(results)], check=True)
    output = result.stdout + result.stderr
    reason = "Read-only file system" if mounted else "a file stands where a folder is needed"
    assert result.returncode != 0 and f"morphotrust: cannot write results: {reason}" in output, output
    assert "Traceback" not in output and "OSError" not in output and len(output.splitlines()) < 6, output
    assert not (workdir / ".snakemake" / "log").exists() or "Job stats" not in output


def test_a_run_that_rebuilds_the_report_marks_the_old_one_out_of_date_first(tmp_path):
    """Issue 23: a run that fails before its report must not leave the earlier run's report looking current. The
    run here fails at its first job (a file stands where the demo's folder goes); the old summary is marked."""
    workdir = make_workdir(tmp_path, **TINY_DEMO)
    summary = workdir / "results" / "report" / "summary.html"
    summary.parent.mkdir(parents=True)
    summary.write_text("<!DOCTYPE html><html><head></head><body><h1>an earlier run</h1></body></html>")
    (workdir / "results" / "data").mkdir()
    (workdir / "results" / "data" / "rxrx1_demo").write_text("")
    result = run_snakemake(workdir, "--cores", "1", check=False)
    assert result.returncode != 0
    text = summary.read_text()
    assert text.count("OUT OF DATE: a new run started at") == 1 and "<h1>an earlier run</h1>" in text
    assert text.index("OUT OF DATE") > text.index("<body>")


# What the killed-run test compares: the generated images themselves and the tables made from them. CellProfiler
# is left out (the test would run it twice for nothing: it measures the same image files).
RESUMED_TARGETS = ["results/trust/generated_scores.parquet", "results/validation/kid_per_condition.csv"]
FINAL_TABLES = ["results/subsets/manifest.parquet", *RESUMED_TARGETS]


# The end-to-end demo runs the default generator, a U-Net on latents (the killed-run test runs the pixel model):
# a trained autoencoder too short to draw cells, so the ceiling is scored and, like the generations, measured by
# CellProfiler without any cell found: the run must say so, not stop.
PIXEL_DEMO = {**TINY_DEMO, "generator.autoencoder": "none", "generator.preset": "tiny"}


@pytest.mark.slow
def test_demo_end_to_end(tiny_demo_run):
    results = tiny_demo_run / "results"
    manifest = pd.read_parquet(results / "subsets" / "manifest.parquet")
    assert set(manifest["Metadata_arm"]) >= {"seen", "unseen"}
    train = manifest[manifest["Metadata_split"] == "train"]
    assert set(train["Metadata_arm"]) <= {"seen", "control"}
    assert (results / "data" / "demo_grid.png").stat().st_size > 10_000
    sites = pd.read_parquet(results / "data" / "sites.parquet")
    assert sites["Metadata_synthetic"].all()
    scores = pd.read_parquet(results / "trust" / "generated_scores.parquet")
    assert set(scores["Metadata_arm"]) == {"seen", "unseen"}
    assert set(scores["Metadata_generator"]) == {"morphotrust-unet-ae"}
    # the ceiling: every held-out site of the studied arms, reconstructed and scored like a generation
    ceiling = json.loads((results / "ceiling" / "ceiling.json").read_text())
    held_out = manifest[(manifest["Metadata_split"] == "evaluation") & manifest["Metadata_arm"].isin(["seen", "unseen"])]
    assert ceiling["arms"]["all"]["n"] == len(held_out) and len(ceiling["psnr_per_stain"]) == 6
    reconstructed = pd.read_csv(results / "ceiling" / "generated_scores.csv")
    assert set(reconstructed["Metadata_real_site_id"]) == set(held_out["Metadata_site_id"])
    summary = (results / "report" / "summary.html").read_text()
    assert "SYNTHETIC" in summary and "The ceiling of the latent space" in summary
    rerun = run_snakemake(tiny_demo_run, "--cores", "2", "-n")
    assert "Nothing to be done" in rerun.stdout + rerun.stderr


@pytest.mark.slow
def test_blank_constant_two_valued_and_nan_generations_are_scored_rejected_and_flagged(tiny_demo_run, tmp_path):
    """Issue 23: bad generations go through features, the reduction and the trust score of a real run like any
    other image: finite scores, rejected, and each flagged with why in generated_scores.csv (the pixels that were
    not numbers are flagged by the generator that stored them as 0)."""
    results = tiny_demo_run / "results"
    generated = pd.read_parquet(results / "generated" / "generator" / "manifest.parquet").iloc[:5].copy()
    size = read_site(tiny_demo_run / generated["Metadata_image_path"].iloc[0]).shape[-1]  # paths: from the workdir
    rng = np.random.default_rng(0)
    bad = {"blank": np.zeros((6, size, size), np.uint8), "constant": np.full((6, size, size), 90, np.uint8),
           "two-valued": (rng.random((6, size, size)) > 0.5).astype(np.uint8) * 200,
           "nan": np.zeros((6, size, size), np.uint8)}  # NaN pixels, stored as 0 by the generator
    generated["Metadata_image_problem"] = ""
    for row, (name, image) in zip(generated.index[1:], bad.items()):
        write_site(tmp_path / f"{name}.tif", image)
        generated.loc[row, ["Metadata_sample_id", "Metadata_image_path"]] = [name, str(tmp_path / f"{name}.tif")]
    generated.loc[generated["Metadata_sample_id"] == "nan", "Metadata_image_problem"] = "not a number: 100.0% ..."
    generated.to_parquet(tmp_path / "manifest.parquet")
    features = yaml.safe_load((tiny_demo_run / "config" / "config.yaml").read_text())["features"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    for args in (["features", "generated", "--manifest", tmp_path / "manifest.parquet", "--config",
                  json.dumps(features), "--out", tmp_path / "features.parquet"],
                 ["reduction", "transform", "--reduction", results / "reduction" / "reduction", "--features",
                  tmp_path / "features.parquet", "--out", tmp_path / "reduced.parquet"],
                 ["trust", "score", "--scorer", results / "trust" / "scorer", "--features", tmp_path / "reduced.parquet",
                  "--real-scores", results / "trust" / "real_scores.parquet", "--out-dir", tmp_path / "trust"]):
        run = subprocess.run([sys.executable, "-m", "morphotrust", *map(str, args)], capture_output=True, text=True,
                             env=env, cwd=tiny_demo_run)
        assert run.returncode == 0, run.stderr[-3000:]
    scores = pd.read_csv(tmp_path / "trust" / "generated_scores.csv", keep_default_na=False).set_index(
        "Metadata_sample_id")
    problem = scores["Metadata_image_problem"]
    assert problem["blank"] == "blank: every pixel is 0" and problem["constant"] == "constant: every pixel is 90"
    assert problem["two-valued"].startswith("constant or two-valued stain(s): w1 (0, 200)")
    assert problem["nan"] == "not a number: 100.0% ...; blank: every pixel is 0"
    assert problem.iloc[0] == ""  # the generator's own image
    bad_rows = scores.loc[list(bad)]
    assert np.isfinite(bad_rows["T"].astype(float)).all() and not bad_rows["accepted"].astype(bool).any()


def _group_members(group: int) -> list:
    """Live (non-zombie) processes of a process group, from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return sorted(members)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_tables(tmp_path):
    """Kill the workflow while the generator trains, rerun: only the unfinished work is redone (training resumes
    from its checkpoint) and the final tables equal the uninterrupted run's."""
    overrides = {**PIXEL_DEMO, "generator.steps": 150, "generator.checkpoint_every": 25}
    workdir = make_workdir(tmp_path, **overrides)
    process = subprocess.Popen([*SNAKEMAKE, "--directory", str(workdir), "--cores", "2", *RESUMED_TARGETS],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    checkpoint = workdir / "results" / "generator" / "checkpoints" / "latest.pt"
    deadline = time.monotonic() + 900
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(1)
    assert process.poll() is None and checkpoint.exists(), "training never wrote a checkpoint"
    sites_before = (workdir / "results" / "data" / "sites.parquet").stat().st_mtime_ns
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        # Snakemake 9.27's SIGTERM handler takes the scheduler's (non-reentrant) lock, so a SIGTERM that lands
        # while the scheduler holds it deadlocks Snakemake itself (seen once in CI, 2026-12-02). What this test
        # is about still holds: every job process of ours has stopped; then Snakemake is killed and unlocked.
        assert _group_members(process.pid) == [process.pid], "a job process outlived the SIGTERM"
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
        run_snakemake(workdir, "--unlock")
    assert not (workdir / "results" / "generator" / "checkpoint.pt").exists(), "training finished before the kill"

    run_snakemake(workdir, "--cores", "2", "--rerun-incomplete", *RESUMED_TARGETS)
    assert (workdir / "results" / "data" / "sites.parquet").stat().st_mtime_ns == sites_before
    train_log = (workdir / "results" / "logs" / "generator" / "train.log").read_text()
    assert "resum" in train_log.lower(), train_log[-2000:]

    uninterrupted = make_workdir(tmp_path / "uninterrupted", **overrides)
    run_snakemake(uninterrupted, "--cores", "2", *RESUMED_TARGETS)
    for table in FINAL_TABLES:
        read = pd.read_csv if table.endswith(".csv") else pd.read_parquet
        pd.testing.assert_frame_equal(read(workdir / table), read(uninterrupted / table), obj=table)
    images = sorted(p.relative_to(workdir) for p in (workdir / "results/generated/generator/images").rglob("*.tif"))
    assert images and images == sorted(p.relative_to(uninterrupted)
                                       for p in (uninterrupted / "results/generated/generator/images").rglob("*.tif"))
    for image in images:
        assert (workdir / image).read_bytes() == (uninterrupted / image).read_bytes(), image


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


def _planned(workdir, *targets) -> dict:
    """{rule: number of jobs} that a dry run would run (Snakemake's job stats table)."""
    output = run_snakemake(workdir, *targets, "-n", "--quiet", "rules").stdout
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", output, flags=re.M) if m[1] != "total"}


def _plate_tables(workdir) -> dict:
    return {p: p.stat().st_mtime_ns for p in (workdir / "results/data/ingest").glob("*/Plate*/sites.parquet")}


@pytest.mark.slow
def test_changed_images_rerun_exactly_their_jobs(tmp_path):
    """Your own folder (a rendered tiny demo as data.rxrx1_path) and external generations: unchanged files ->
    nothing to be done; a fixed site that skip dropped -> its plate alone is ingested again and the site is in;
    one external image replaced under the same name -> converted again and its scores change."""
    import json

    import numpy as np
    import shutil

    from morphotrust.data.cli import cli as data_cli

    demo = {"experiments_per_cell_type": 1, "plates_per_experiment": 2}
    rxrx1 = tmp_path / "rxrx1"
    data_cli(["render-demo", "--out", str(rxrx1), "--demo", json.dumps(demo)])
    metadata = pd.read_csv(rxrx1 / "metadata.csv")
    first, second = metadata.iloc[0], metadata.iloc[1]
    plate = rxrx1 / "images" / first["experiment"] / f"Plate{first['plate']}"
    broken = plate / f"{first['well']}_s{first['site']}_w3.png"
    kept = tmp_path / "kept_w3.png"
    shutil.move(broken, kept)  # the site is skipped

    external = tmp_path / "external"
    external.mkdir()
    for name, row in (("a", first), ("b", second)):
        source = rxrx1 / "images" / row["experiment"] / f"Plate{row['plate']}"
        for c in range(1, 7):
            channel = source / f"{row['well']}_s{row['site']}_w{c}.png"
            shutil.copy(channel if channel.exists() else kept, external / f"{name}_w{c}.png")
    (external / "manifest.csv").write_text(f"path,cell_type,sirna_id\na,{first['cell_type']},{first['sirna_id']}\n"
                                           f"b,{second['cell_type']},{second['sirna_id']}\n")
    overrides = {**TINY_DEMO, "data.rxrx1_path": str(rxrx1), "data.on_bad_site": "skip",
                 "generated.source": "external", "generated.external.folder": str(external),
                 "generated.external.manifest": str(external / "manifest.csv")}
    workdir = make_workdir(tmp_path / "work", **overrides)
    targets = ["results/data/sites.parquet", "results/trust/generated_scores.parquet"]
    assert _planned(workdir, *targets)["data_ingest_plate"] == metadata.groupby(["experiment", "plate"]).ngroups
    run_snakemake(workdir, "--cores", "2", *targets)
    sites = pd.read_parquet(workdir / "results/data/sites.parquet")
    assert first["site_id"] not in set(sites["Metadata_site_id"])
    assert str(broken) in pd.read_csv(workdir / "results/data/qc_skipped.csv")["file"].tolist()
    scores = pd.read_parquet(workdir / "results/trust/generated_scores.parquet")

    # unchanged files: nothing to be done
    assert "Nothing to be done" in run_snakemake(workdir, "-n", *targets).stdout
    plates_before = _plate_tables(workdir)

    # replace one external image under the same name: the conversion and the scoring rerun, its scores change
    other = rxrx1 / "images" / second["experiment"] / f"Plate{second['plate']}"
    for c in range(1, 7):
        image = np.asarray(Image.open(other / f"{second['well']}_s{second['site']}_w{c}.png"))
        Image.fromarray(np.ascontiguousarray(image[::-1, ::-1])).save(external / f"b_w{c}.png")
    planned = _planned(workdir, *targets)
    assert planned.get("external") == 1 and planned.get("trust_score") == 1, planned
    assert "data_ingest_plate" not in planned and "features_real" not in planned, planned
    run_snakemake(workdir, "--cores", "2", *targets)
    assert _plate_tables(workdir) == plates_before
    rescored = pd.read_parquet(workdir / "results/trust/generated_scores.parquet")
    by_path = {t: s.set_index("Metadata_external_path") for t, s in (("before", scores), ("after", rescored))}
    assert by_path["before"].loc["a", "T"] == pytest.approx(by_path["after"].loc["a", "T"])
    assert by_path["before"].loc["b", "T"] != pytest.approx(by_path["after"].loc["b", "T"])

    # fix the skipped site: its plate alone is ingested again, and the site is in
    shutil.move(kept, broken)
    assert _planned(workdir, "results/data/sites.parquet") == {"data_ingest_plate": 1, "data_merge": 1}
    run_snakemake(workdir, "--cores", "2", "results/data/sites.parquet")
    fixed = workdir / "results/data/ingest" / first["experiment"] / f"Plate{first['plate']}" / "sites.parquet"
    changed = {p for p, mtime in _plate_tables(workdir).items() if mtime != plates_before[p]}
    assert changed == {fixed}
    assert first["site_id"] in set(pd.read_parquet(workdir / "results/data/sites.parquet")["Metadata_site_id"])
    assert pd.read_csv(workdir / "results/data/qc_skipped.csv").empty
