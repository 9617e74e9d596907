"""Coverage diagnostic: per unseen condition and attribute, how well the seen arm covers its values."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd

from morphotrust.config import schema_defaults
from morphotrust.report import Inputs
from morphotrust.report.summary import condition_table, coverage_section
from morphotrust.subsets import build_manifest, coverage

CFG = {
    "resolution": 8, "max_sites_per_condition": 24, "min_sites_per_condition": 4, "seed": 3,
    "split_fractions": {"train": 0.5, "calibration": 0.25, "evaluation": 0.25},
    "controls": {"negative": False, "positive": False, "max_sites_per_plate": 2},
}
CELL_TYPES = ("HEPG2", "HUVEC", "RPE", "U2OS")


def _sites():
    rows = []
    for cell_type in CELL_TYPES:
        for plate in (1, 2):
            experiment = f"{cell_type}-01"
            for sirna_id in (0, 1, 2):
                for w in range(3):
                    well = f"{'BCD'[w]}{sirna_id + 2:02d}"
                    for site in (1, 2):
                        site_id = f"{experiment}_{plate}_{well}_{site}"
                        rows.append({"Metadata_site_id": site_id, "Metadata_well_id": f"{experiment}_{plate}_{well}",
                                     "Metadata_cell_type": cell_type, "Metadata_experiment": experiment,
                                     "Metadata_plate": plate, "Metadata_well": well, "Metadata_site": site,
                                     "Metadata_sirna_id": sirna_id, "Metadata_sirna": f"s{sirna_id}",
                                     "Metadata_image_path": f"{site_id}.tif"})
    return pd.DataFrame(rows)


def _conditions(seen, unseen):
    rows = [{"condition": f"{c}:{s}", "arm": arm, "cell_type": c, "sirna_id": s, "entry": f"{arm}[{i}]"}
            for arm, pairs in (("seen", seen), ("unseen", unseen)) for i, (c, s) in enumerate(pairs)]
    return pd.DataFrame(rows)


# siRNA 0 is seen with three cell types, siRNA 1 with one; every cell type is seen with siRNA 2 as well.
SEEN = [("HEPG2", 0), ("RPE", 0), ("U2OS", 0), ("HEPG2", 1), *[(c, 2) for c in CELL_TYPES]]
UNSEEN = [("HUVEC", 0), ("RPE", 1)]


def _table(cfg=None):
    conditions = _conditions(SEEN, UNSEEN)
    manifest = build_manifest(_sites(), conditions, CFG)
    return coverage.coverage_table(conditions, manifest, cfg or schema_defaults("subsets", "coverage")), manifest


def test_counts_seen_conditions_training_sites_and_contexts_per_attribute():
    table, manifest = _table({"min_contexts": 2, "min_train_sites": 4})
    row = table.set_index(["condition", "attribute"])
    assert row.loc[("HUVEC:0", "sirna_id"), "n_contexts"] == 3
    assert row.loc[("HUVEC:0", "sirna_id"), "contexts"] == "HEPG2|RPE|U2OS"
    assert row.loc[("RPE:1", "sirna_id"), "n_seen_conditions"] == 1
    assert row.loc[("RPE:1", "sirna_id"), "contexts"] == "HEPG2"
    # HUVEC is seen only with siRNA 2; RPE with 0 and 2
    assert row.loc[("HUVEC:0", "cell_type"), "contexts"] == "2"
    assert row.loc[("RPE:1", "cell_type"), "contexts"] == "0|2"
    train = manifest[(manifest["Metadata_split"] == "train") & (manifest["Metadata_arm"] == "seen")]
    assert row.loc[("HUVEC:0", "sirna_id"), "n_train_sites"] == (train["Metadata_sirna_id"] == 0).sum() > 0
    assert row.loc[("HUVEC:0", "cell_type"), "n_train_sites"] == (train["Metadata_cell_type"] == "HUVEC").sum()
    # low: the siRNA seen with 1 cell type, and HUVEC seen with 1 siRNA; not the siRNA seen with 3
    assert not row.loc[("HUVEC:0", "sirna_id"), "low"]
    assert row.loc[("RPE:1", "sirna_id"), "low"]
    assert "siRNA 1 seen with 1 cell type (minimum 2)" in row.loc[("RPE:1", "sirna_id"), "reason"]
    assert row.loc[("HUVEC:0", "cell_type"), "low"]
    per = coverage.per_condition(table).set_index("condition")
    assert per["coverage_low"].to_dict() == {"HUVEC:0": True, "RPE:1": True}


def test_minimums_are_configurable_and_training_sites_count():
    table, _ = _table({"min_contexts": 1, "min_train_sites": 0})
    assert not table["low"].any()
    table, _ = _table({"min_contexts": 0, "min_train_sites": 10_000})
    assert table["low"].all() and table["reason"].str.contains("training site").all()


def test_annotate_adds_a_column_per_sample_false_for_seen():
    table, _ = _table({"min_contexts": 2, "min_train_sites": 0})
    scores = pd.DataFrame({"Metadata_condition": ["HUVEC:0", "RPE:1", "HEPG2:0"], "T": [1.0, 2.0, 3.0]})
    out = coverage.annotate(scores, table)
    assert out["coverage_low"].tolist() == [True, True, False]
    assert out["coverage_note"].iloc[2] == "" and "siRNA 1 seen with 1 cell type" in out["coverage_note"].iloc[1]


def test_subsets_stage_writes_the_table_and_warns_in_its_log(tmp_path):
    sites = _sites()
    sites_path = tmp_path / "sites.parquet"
    sites.to_parquet(sites_path)
    conditions = tmp_path / "conditions.yaml"
    conditions.write_text(json.dumps({"seen": [{"cell_type": c, "sirna_id": s} for c, s in SEEN],
                                      "unseen": [{"cell_type": c, "sirna_id": s} for c, s in UNSEEN]}))
    # sites.parquet has no well_type column (load_conditions needs it): add it as the ingest stage does
    sites.assign(Metadata_well_type="treatment").to_parquet(sites_path)
    cfg = dict(CFG, coverage={"min_contexts": 2, "min_train_sites": 1})
    result = subprocess.run([sys.executable, "-m", "morphotrust", "subsets", "manifest", "--sites", str(sites_path),
                             "--conditions", str(conditions), "--config", json.dumps(cfg),
                             "--out-dir", str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "WARNING: low coverage of unseen condition RPE:1: siRNA 1 seen with 1 cell type" in result.stdout
    written = coverage.read(tmp_path / "out" / "coverage.csv")
    assert len(written) == 4 and written["low"].sum() == 2


def test_run_summary_flags_low_coverage_in_the_verdict_and_shows_the_table(tmp_path):
    table, _ = _table({"min_contexts": 2, "min_train_sites": 0})
    (tmp_path / "subsets").mkdir()
    table.to_csv(tmp_path / "subsets" / "coverage.csv", index=False)
    generated = pd.DataFrame({"Metadata_condition": ["HUVEC:0"] * 2 + ["HEPG2:0"] * 2,
                              "Metadata_arm": ["unseen"] * 2 + ["seen"] * 2, "T": [0.0, 0.1, 0.0, 0.1],
                              "R": 0.0, "F": 0.0, "accepted": True})
    generated = coverage.annotate(generated, table)
    verdicts = condition_table(Inputs(), generated, {"min_acceptance": 0.5, "max_centroid_z": None})
    verdicts = verdicts.set_index("condition")
    assert verdicts.loc["HEPG2:0", "verdict"] == "trusted" and verdicts.loc["HEPG2:0", "coverage"] == "ok"
    assert verdicts.loc["HUVEC:0", "verdict"] == "check: low coverage of its cell type or siRNA in training"
    assert verdicts.loc["HUVEC:0", "coverage"].startswith("low: cell type HUVEC seen with 1 siRNA")
    html = coverage_section(tmp_path)
    assert "Are the unseen conditions covered by training?" in html
    assert "HEPG2|RPE|U2OS" in html and "2 of 2 unseen" in html
    assert coverage_section(tmp_path / "nothing") == ""
    (tmp_path / "coverage_experiment").mkdir()
    pd.DataFrame({"level": [3, 1], "faithfulness_auroc": [0.61, 0.493]}).to_csv(
        tmp_path / "coverage_experiment" / "coverage_experiment.csv", index=False)
    html = coverage_section(tmp_path)
    assert "Controlled coverage violation (this run's experiment)" in html and "0.493" in html
    assert np.isfinite(verdicts["acceptance"]).all()
