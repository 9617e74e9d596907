"""The controlled coverage violation: thinning the seen cell types of unseen siRNAs, refitting, measuring."""

import json

import numpy as np
import pandas as pd
import pytest

from morphotrust.coverage_experiment import dropped_conditions, run
from morphotrust.features import write_features

from workflow_helpers import REPO, make_workdir, run_snakemake

CELL_TYPES = ["HEPG2", "HUVEC", "RPE", "U2OS"]
UNSEEN = [("HUVEC", 0), ("RPE", 1), ("U2OS", 2), ("HEPG2", 3)]
D = 24


def _features(tmp_path, bad_generated=False, n_per=12, seed=0):
    """Additive cell-type + siRNA effects in a 24-d feature space; every unseen siRNA seen with 3 cell types."""
    rng = np.random.default_rng(seed)
    ct_effect = {c: rng.normal(0, 1, D) for c in CELL_TYPES}
    si_effect = {s: rng.normal(0, 1, D) for s in range(6)}
    splits = {"train": [], "calibration": [], "evaluation": []}
    for c in CELL_TYPES:
        for s in range(6):
            arm = "unseen" if (c, s) in UNSEEN else "seen"
            X = 3 + ct_effect[c] + si_effect[s] + rng.normal(0, 0.6, (n_per, D))
            meta = pd.DataFrame({"Metadata_condition": f"{c}:{s}", "Metadata_arm": arm, "Metadata_cell_type": c,
                                 "Metadata_sirna_id": s}, index=range(n_per))
            parts = {"train": slice(0, 6), "calibration": slice(6, 9), "evaluation": slice(9, 12)}
            if arm == "unseen":
                parts = {"evaluation": slice(0, n_per)}
            for split, rows in parts.items():
                splits[split].append((meta.iloc[rows].assign(Metadata_split=split), X[rows]))
    paths = {}
    for split, parts in splits.items():
        paths[split] = tmp_path / f"real_{split}.parquet"
        write_features(pd.concat([m for m, _ in parts], ignore_index=True), np.concatenate([x for _, x in parts]),
                       {"encoder": "synthetic"}, paths[split])
    gen_meta, gen_X = [], []
    for c, s in UNSEEN:
        good = 3 + ct_effect[c] + si_effect[s] + rng.normal(0, 0.6, (10, D))
        bad = rng.normal(0, 4, (10, D))
        X = bad if bad_generated else np.concatenate([good, bad])
        gen_X.append(X)
        gen_meta.append(pd.DataFrame({"Metadata_sample_id": [f"{c}{s}-{i}" for i in range(len(X))],
                                      "Metadata_condition": f"{c}:{s}", "Metadata_arm": "unseen",
                                      "Metadata_cell_type": c, "Metadata_sirna_id": s,
                                      "Metadata_generator": "synthetic"}))
    paths["generated"] = tmp_path / "generated.parquet"
    write_features(pd.concat(gen_meta, ignore_index=True), np.concatenate(gen_X), {"encoder": "synthetic"},
                   paths["generated"])
    return paths


CFG = {"levels": [3, 2, 1], "trust": {"calibration_source": "calibration_split"},
       "kid": {"max_subset": 50, "n_subsets": 5, "min_subset": 5, "n_random_seeds": 3}, "seed": 0}


def test_dropping_keeps_the_first_k_seen_cell_types_of_each_unseen_sirna():
    seen = pd.DataFrame([(c, s) for c in CELL_TYPES for s in range(4) if (c, s) not in UNSEEN],
                        columns=["cell_type", "sirna_id"])
    unseen = pd.DataFrame(UNSEEN, columns=["cell_type", "sirna_id"])
    drop, kept = dropped_conditions(seen, unseen, 1)
    assert ("HEPG2", 0) not in drop and {("RPE", 0), ("U2OS", 0)} <= drop and len(drop) == 8
    assert kept == [1, 1, 1, 1]
    drop, kept = dropped_conditions(seen, unseen, 5)
    assert drop == set() and kept == [3, 3, 3, 3]


def test_levels_refit_on_fewer_sites_and_measure_auroc_and_gain(tmp_path):
    paths = _features(tmp_path)
    table = run(paths["train"], paths["calibration"], paths["evaluation"], paths["generated"], CFG, tmp_path / "out")
    assert table["level"].tolist() == [3, 2, 1]
    assert table["max_contexts_kept"].tolist() == [3, 2, 1]
    assert table["seen_conditions_dropped"].tolist() == [0, 4, 8]
    assert table["n_fit"].is_monotonic_decreasing and table["n_fit"].iloc[0] == 20 * 6
    # additive effects: the true siRNA is recognised on held-out real sites of the unseen conditions
    assert (table["faithfulness_auroc"] > 0.9).all()
    assert (table["n_true"] == 48).all() and (table["n_wrong"] == 48 * 5).all()
    # half the "generated" images are real-like, half noise: trust keeps the former, so selection beats random
    assert (table["selection_gain"] > 0).all()
    # (at most the real-like half is accepted; fewer as the coverage shrinks)
    assert ((table["acceptance_unseen"] > 0.1) & (table["acceptance_unseen"] <= 0.5)).all()
    summary = json.loads((tmp_path / "out" / "coverage_experiment.json").read_text())
    assert summary["unseen_conditions"] == sorted(f"{c}:{s}" for c, s in UNSEEN)
    assert (tmp_path / "out" / "coverage_experiment.png").read_bytes()[:4] == b"\x89PNG"


def test_selection_gain_is_undefined_with_its_reason_when_nothing_is_accepted(tmp_path):
    paths = _features(tmp_path, bad_generated=True)
    table = run(paths["train"], paths["calibration"], paths["evaluation"], paths["generated"], CFG, tmp_path / "out")
    assert table["selection_gain"].isna().all() and (table["acceptance_unseen"] == 0).all()
    assert table["selection_gain_note"].str.startswith("undefined: 0 of 40 generated images").all()
    assert (table["faithfulness_auroc"] > 0.9).all()  # needs no generator


@pytest.mark.slow
def test_variant_runs_on_the_tiny_demo_without_cellprofiler(tmp_path):
    """The variant's documented command at TINY size: data, subsets, features, stand-ins, the experiment."""
    workdir = make_workdir(tmp_path, **{"data.demo.experiments_per_cell_type": 1, "features.image_size": 64})
    result = run_snakemake(workdir, "--configfile", str(REPO / "config" / "coverage_experiment.yaml"), "--cores",
                           "2", "results/coverage_experiment/coverage_experiment.csv")
    assert "morphology" not in result.stderr.split("Job stats")[1].split("Select jobs")[0]
    table = pd.read_csv(workdir / "results" / "coverage_experiment" / "coverage_experiment.csv")
    assert table["max_contexts_kept"].tolist() == [3, 2, 1]
    assert table["faithfulness_auroc"].between(0, 1).all()
    assert table["n_true"].gt(0).all()
