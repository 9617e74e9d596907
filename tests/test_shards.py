"""Sharded sampling and features (morphotrust.shards): S shard jobs by condition groups merged into the very
files of one job, byte for byte on CPU, and a finished shard is not redone."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from morphotrust.config import check_config
from morphotrust.errors import InputError
from morphotrust.features.cli import cli as features_cli
from morphotrust.generator.sample import merge_shards, run_sampling
from morphotrust.generator.train import train
from morphotrust.shards import aligned_range, condition_groups, shard_range
from test_generator import RES, config, make_toy_subsets
from workflow_helpers import make_workdir, run_snakemake

# 3 conditions (2 seen, 1 unseen) x 3 samples, batches of 4: the chunk of samples 4-7 holds conditions 2 and 3,
# which fall into different shards (condition groups [c1, c2], [c3]).
SAMPLE_CFG = dict(samples_per_condition=3, sampling_batch_size=4, sampling_steps=3)


def test_condition_groups_and_batch_aligned_ranges():
    assert condition_groups(["a", "b", "b", "c", "d"], 3) == [["a", "b"], ["c"], ["d"]]
    column = pd.Series(["a", "a", "b", "b", "b", "c"])
    assert [shard_range(column, i, 2) for i in range(2)] == [(0, 5), (5, 6)]
    assert aligned_range(5, 6, 4, 6) == (4, 6) and aligned_range(0, 5, 4, 6) == (0, 6)
    with pytest.raises(InputError, match="not contiguous"):
        shard_range(pd.Series(["a", "b", "a"]), 0, 2)
    with pytest.raises(InputError, match="3 shards for 2 conditions"):
        shard_range(pd.Series(["a", "b"]), 0, 3)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    toy = make_toy_subsets(tmp_path_factory.mktemp("subsets"))
    out = tmp_path_factory.mktemp("generator")
    train(toy / "manifest.parquet", toy / "stacks", out, config(steps=4), RES)
    return toy, out / "checkpoint.pt"


def snapshot(folder: Path, names) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for name in names for p in sorted(folder.glob(name))}


def test_sharded_sampling_and_features_equal_one_job_byte_for_byte(model, tmp_path, capsys):
    toy, checkpoint = model
    cfg = config(**SAMPLE_CFG)
    out = tmp_path / "generated"
    args = (toy / "manifest.parquet", toy / "stacks", checkpoint, out, cfg)
    files = ("manifest.parquet", "summary.json", "grid.png", "images/*/*.tif", "features.*")
    features_cfg = json.dumps({**check_config({})["features"], "image_size": 32, "device": "cpu", "batch_size": 4})

    def features(*extra, out_name="features.parquet"):
        features_cli(["generated", "--manifest", str(out / "manifest.parquet"), "--config", features_cfg,
                      "--threads", "1", "--out", str(out / out_name), *extra])

    run_sampling(*args)
    features()
    whole = snapshot(out, files)
    assert len([k for k in whole if k.endswith(".tif")]) == 9
    shutil.rmtree(out)

    tables = []
    for shard in range(2):
        table = run_sampling(*args, shard=(shard, 2))
        tables.append(tmp_path / f"shard{shard}.parquet")
        table.to_parquet(tables[-1])
    assert not (out / "manifest.parquet").exists()
    capsys.readouterr()
    run_sampling(*args, shard=(0, 2))  # resumable per shard: a finished shard computes nothing again
    assert "2 of 2 batches done earlier" in capsys.readouterr().err
    merge_shards(toy / "manifest.parquet", toy / "stacks", checkpoint, tables, out, cfg)
    for shard in range(2):
        features("--shard", str(shard), "--shards", "2", out_name=f"shard{shard}.parquet")
    features("--merge", str(out / "shard0.parquet"), str(out / "shard1.parquet"))
    sharded = snapshot(out, files)
    assert sharded.keys() == whole.keys()
    different = [name for name in whole if whole[name] != sharded[name]]
    assert different == [], different


def test_a_sharded_configuration_makes_one_job_per_shard_and_merges(tmp_path):
    workdir = make_workdir(tmp_path, **{"generator.sample_shards": 2, "features.shards": 2})
    dry = run_snakemake(workdir, "-n", "--forceall", "--quiet", "rules", timeout=300).stdout
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", dry, flags=re.M))
    assert counts["sample_shard"] == "2" and counts["sample"] == "1", dry
    # generated features: the generator's samples and the autoencoder's reconstructions (the ceiling), 2 shards each
    assert counts["features_real_shard"] == "6" and counts["features_generated_shard"] == "4", dry
    assert counts["features_real"] == "3" and counts["features_generated"] == "2", dry
    assert counts["generation_trust_shard"] == "2" and counts["generation_trust"] == "1", dry
    one_job = run_snakemake(make_workdir(tmp_path / "one"), "-n", "--forceall", "--quiet", "rules").stdout
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", one_job, flags=re.M))
    assert counts["sample"] == "1" and counts["features_real"] == "3", one_job
    assert not any(rule.endswith("_shard") for rule in counts), one_job
