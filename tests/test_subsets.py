"""Condition-balanced subsets: balance across plates, disjoint well-level splits, unseen never in training."""

import numpy as np
import pandas as pd
import pytest

from morphotrust.errors import InputError
from morphotrust.images import read_site, resize_site, write_site
from morphotrust.subsets import build_manifest, summarise, write_stack

CFG = {
    "resolution": 8, "max_sites_per_condition": 24, "min_sites_per_condition": 4, "seed": 3,
    "split_fractions": {"train": 0.5, "calibration": 0.25, "evaluation": 0.25},
    "controls": {"negative": True, "positive": False, "max_sites_per_plate": 2},
}


def _sites(n_plates=4, wells_per_sirna=4, sites_per_well=2):
    rows = []
    for cell_type in ("HUVEC", "RPE"):
        for plate_index in range(n_plates):
            experiment, plate = f"{cell_type}-0{plate_index // 2 + 1}", plate_index % 2 + 1
            for sirna_id in (0, 1, 1108, 1138):
                for w in range(wells_per_sirna):
                    well = f"{'BCDE'[w]}{sirna_id % 20 + 2:02d}"
                    for site in range(1, sites_per_well + 1):
                        site_id = f"{experiment}_{plate}_{well}_{site}"
                        rows.append({
                            "Metadata_site_id": site_id, "Metadata_well_id": f"{experiment}_{plate}_{well}",
                            "Metadata_cell_type": cell_type, "Metadata_experiment": experiment,
                            "Metadata_plate": plate, "Metadata_well": well, "Metadata_site": site,
                            "Metadata_sirna_id": sirna_id, "Metadata_sirna": f"s{sirna_id}",
                            "Metadata_image_path": f"{site_id}.tif",
                        })
    return pd.DataFrame(rows)


def _conditions():
    return pd.DataFrame([
        {"condition": "HUVEC:0", "arm": "seen", "cell_type": "HUVEC", "sirna_id": 0, "entry": "seen[0]"},
        {"condition": "RPE:1", "arm": "seen", "cell_type": "RPE", "sirna_id": 1, "entry": "seen[1]"},
        {"condition": "HUVEC:1", "arm": "seen", "cell_type": "HUVEC", "sirna_id": 1, "entry": "seen[2]"},
        {"condition": "RPE:0", "arm": "unseen", "cell_type": "RPE", "sirna_id": 0, "entry": "unseen[0]"},
    ])


def test_balance_and_caps():
    manifest = build_manifest(_sites(), _conditions(), CFG)
    listed = manifest[manifest["Metadata_arm"] != "control"]
    assert listed.groupby("Metadata_condition").size().tolist() == [24] * 4
    # 32 candidate sites over 4 plates, 24 taken: every plate gives 6 (whole wells, plates interleaved).
    per_plate = listed.groupby(["Metadata_condition", "Metadata_experiment", "Metadata_plate"]).size()
    assert set(per_plate) == {6}


def test_splits_disjoint_by_well_and_fractions():
    manifest = build_manifest(_sites(), _conditions(), CFG)
    assert manifest["Metadata_site_id"].is_unique
    assert (manifest.groupby("Metadata_well_id")["Metadata_split"].nunique() == 1).all()
    seen = manifest[manifest["Metadata_arm"] == "seen"]
    shares = seen.groupby("Metadata_condition")["Metadata_split"].value_counts(normalize=True).unstack()
    assert np.allclose(shares[["train", "calibration", "evaluation"]], [0.5, 0.25, 0.25], atol=0.1)


def test_unseen_only_in_evaluation():
    manifest = build_manifest(_sites(), _conditions(), CFG)
    unseen = manifest[manifest["Metadata_arm"] == "unseen"]
    assert set(unseen["Metadata_condition"]) == {"RPE:0"}
    assert set(unseen["Metadata_split"]) == {"evaluation"}
    train = manifest[manifest["Metadata_split"] == "train"]
    assert "RPE:0" not in set(train["Metadata_condition"])


def test_same_plate_controls():
    manifest = build_manifest(_sites(), _conditions(), CFG)
    controls = manifest[manifest["Metadata_arm"] == "control"]
    assert set(controls["Metadata_sirna_id"]) == {1138}
    listed = manifest[manifest["Metadata_arm"] != "control"]
    plates = set(zip(listed["Metadata_experiment"], listed["Metadata_plate"]))
    assert set(zip(controls["Metadata_experiment"], controls["Metadata_plate"])) == plates
    assert controls.groupby(["Metadata_experiment", "Metadata_plate"]).size().max() <= 2
    with_positive = build_manifest(_sites(), _conditions(), {**CFG, "controls": {
        "negative": False, "positive": True, "max_sites_per_plate": 2}})
    assert set(with_positive.query("Metadata_arm == 'control'")["Metadata_sirna_id"]) == {1108}


def test_deterministic_by_seed_and_stack_indices():
    a = build_manifest(_sites(), _conditions(), CFG)
    b = build_manifest(_sites(), _conditions(), CFG)
    c = build_manifest(_sites(), _conditions(), {**CFG, "seed": 4})
    pd.testing.assert_frame_equal(a, b)
    assert not a["Metadata_site_id"].equals(c["Metadata_site_id"])
    for _, rows in a.groupby("Metadata_split"):
        assert sorted(rows["Metadata_stack_index"]) == list(range(len(rows)))


def test_too_few_ingested_sites_named():
    sites = _sites(n_plates=1, wells_per_sirna=1)
    with pytest.raises(InputError, match=r"seen\[0\].*HUVEC:0 has 2 ingested site\(s\)"):
        build_manifest(sites, _conditions(), CFG)


def test_bad_fractions():
    cfg = {**CFG, "split_fractions": {"train": 0.5, "calibration": 0.5, "evaluation": 0.5}}
    with pytest.raises(InputError, match="sum to 1.500"):
        build_manifest(_sites(), _conditions(), cfg)


def test_summary_counts():
    manifest = build_manifest(_sites(), _conditions(), CFG)
    summary = summarise(manifest)
    by_condition = summary[summary["level"] == "condition"].set_index("name")
    assert by_condition.loc["RPE:0", "evaluation"] == 24 and by_condition.loc["RPE:0", "train"] == 0
    by_plate = summary[summary["level"] == "plate"]
    assert by_plate["total"].sum() == len(manifest)


def test_stack_matches_resized_sites(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(3):
        path = tmp_path / f"site{i}.tif"
        write_site(path, rng.integers(0, 255, size=(6, 16, 16), dtype=np.uint8))
        rows.append({"Metadata_split": "train", "Metadata_stack_index": 2 - i, "Metadata_image_path": str(path)})
    manifest = pd.DataFrame(rows)
    write_stack(manifest, "train", 8, tmp_path / "train.npy")
    stack = np.load(tmp_path / "train.npy", mmap_mode="r")
    assert stack.shape == (3, 6, 8, 8) and stack.dtype == np.uint8
    for row in rows:
        expected = resize_site(read_site(row["Metadata_image_path"]), 8)
        assert np.array_equal(stack[row["Metadata_stack_index"]], expected)
    # a 16 -> 8 box filter is the exact 2x2 block mean
    first = read_site(rows[2]["Metadata_image_path"]).astype(float)
    block_mean = first.reshape(6, 8, 2, 8, 2).mean(axis=(2, 4))
    assert np.abs(stack[0].astype(float) - block_mean).max() <= 0.5 + 1e-6


def test_too_few_sites_after_skips_names_the_skipped_sites_and_their_list(tmp_path):
    """Issue 26: the error says how many of the condition's sites ingest skipped, and where they are listed."""
    import json

    from morphotrust.subsets.cli import cli

    sites = _sites().assign(Metadata_well_type="treatment", Metadata_dataset="train")
    skipped_ids = sites.loc[sites["Metadata_cell_type"].eq("HUVEC") & sites["Metadata_sirna_id"].eq(0),
                            "Metadata_site_id"].head(5).tolist()
    metadata = sites.rename(columns=lambda c: c.removeprefix("Metadata_"))
    metadata[["site_id", "well_id", "cell_type", "dataset", "experiment", "plate", "well", "site", "well_type",
              "sirna", "sirna_id"]].to_csv(tmp_path / "metadata.csv", index=False)
    sites[~sites["Metadata_site_id"].isin(skipped_ids)].to_parquet(tmp_path / "sites.parquet")
    pd.DataFrame({"experiment": "HUVEC-01", "plate": 1, "site_id": skipped_ids, "metadata_line": 2, "file": "x.png",
                  "problem": "unreadable", "detail": "", "action": "skipped"}).to_csv(tmp_path / "qc_skipped.csv",
                                                                                     index=False)
    (tmp_path / "conditions.yaml").write_text("seen:\n  - {cell_type: HUVEC, sirna_id: 0}\n")
    args = ["manifest", "--sites", str(tmp_path / "sites.parquet"), "--conditions", str(tmp_path / "conditions.yaml"),
            "--config", json.dumps({**CFG, "min_sites_per_condition": 30}), "--out-dir", str(tmp_path / "out"),
            "--metadata", str(tmp_path / "metadata.csv"), "--skipped", str(tmp_path / "qc_skipped.csv")]
    with pytest.raises(InputError) as caught:
        cli(args)
    assert ("condition HUVEC:0 has 27 real site(s), fewer than subsets.min_sites_per_condition = 30: 5 of its sites "
            f"were skipped at ingest (data.on_bad_site: skip), listed in {tmp_path / 'qc_skipped.csv'}"
            in str(caught.value)), caught.value
