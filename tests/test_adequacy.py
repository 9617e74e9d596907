"""Encoder adequacy (morphotrust.trust.adequacy): a stain-blind encoder is detected as such, an encoder that sees every
stain is not, and the flags reach generated_scores and the summary's verdict table."""

import json

import numpy as np
import pandas as pd
import pytest

from morphotrust.trust import adequacy
from morphotrust.report.summary import adequacy_flags
from morphotrust.trust import TrustScorer
from morphotrust.trust.cli import cli

# siRNA phenotypes of the synthetic sites: 0 control, 1 brighter nuclei (w1), 2 brighter RNA stain (w4),
# 3 textured mitochondria (w5). Cell types differ in the ER stain (w2).
PHENOTYPES = {0: None, 1: ("bright", 0), 2: ("bright", 3), 3: ("texture", 4)}


def sites(rng, n):
    cell = rng.integers(0, 2, n)
    sirna = rng.integers(0, 4, n)
    images = rng.gamma(4.0, 5.0, size=(n, 6, 16, 16))
    images[:, 1] *= (1.0 + 0.6 * cell)[:, None, None]
    for i, s in enumerate(sirna):
        if PHENOTYPES[s] is None:
            continue
        kind, stain = PHENOTYPES[s]
        if kind == "bright":
            images[i, stain] *= 1.8
        else:
            images[i, stain] *= 1.0 + 1.5 * (rng.random((16, 16)) > 0.7)
    return images, {"cell_type": np.array(["HEPG2", "RPE"], dtype=object)[cell], "sirna_id": sirna}


def stain_statistics(images, stains):
    """A simple real encoder: mean, std and mean |gradient| of the given stains, plus a constant."""
    parts = []
    for c in stains:
        x = images[:, c]
        parts += [x.mean(axis=(1, 2)), x.std(axis=(1, 2)), np.abs(np.diff(x, axis=2)).mean(axis=(1, 2))]
    return np.stack(parts + [np.full(len(images), 50.0)], axis=1)


@pytest.fixture(scope="module")
def split_sites():
    rng = np.random.default_rng(0)
    return [sites(rng, n) for n in (240, 120, 120)]  # fit, calibration, held out


def table_for(split_sites, stains):
    (fit, a_fit), (cal, a_cal), (held, a_held) = split_sites
    encode = lambda images: stain_statistics(images, stains)
    scorer = TrustScorer().fit(encode(fit), a_fit, encode(cal), a_cal)
    return adequacy.adequacy_table(scorer, encode(held), a_held, 0.75), scorer


def test_stain_blind_encoder_is_detected(split_sites):
    blind, _ = table_for(split_sites, stains=(0, 1))  # sees nuclei and ER only, like a composite blind to w3-w6
    sirna = blind[blind["attribute"] == "sirna_id"].set_index("value")
    print(sirna[["nearest_prototype_accuracy", "margin_auroc", "status"]])
    # the w4 and w5 phenotypes (and the control they are confused with) cannot be told apart
    for value in (0, 2, 3):
        assert sirna.loc[value, "status"] == adequacy.NOT_INFORMATIVE
        assert sirna.loc[value, "margin_auroc"] < 0.75
    assert sirna.loc[1, "status"] == adequacy.INFORMATIVE and sirna.loc[1, "margin_auroc"] > 0.95
    cells = blind[blind["attribute"] == "cell_type"]
    assert (cells["status"] == adequacy.INFORMATIVE).all()
    text = adequacy.warnings(blind)
    assert any(line.startswith("faithfulness for siRNA 2 is not informative with this encoder: AUROC 0.")
               for line in text)
    assert not any("siRNA 1 " in line for line in text)


def test_encoder_that_sees_every_stain_is_adequate(split_sites):
    full, _ = table_for(split_sites, stains=range(6))
    assert (full["status"] == adequacy.INFORMATIVE).all()
    assert full["margin_auroc"].min() > 0.9
    assert (full["nearest_prototype_accuracy"] > full["chance_accuracy"] + 0.3).all()
    assert adequacy.warnings(full) == []


def test_table_matches_a_direct_computation(split_sites):
    table, scorer = table_for(split_sites, stains=(0, 1))
    (_, _), (_, _), (held, a_held) = split_sites
    X = stain_statistics(held, (0, 1))
    distances = scorer.value_distances(X, "sirna_id")
    for v in range(4):
        own = a_held["sirna_id"] == v
        margin = distances[:, v] - np.delete(distances, v, axis=1).min(axis=1)
        # AUROC by counting pairs: wrong-value sites with a larger margin than true-value sites
        pairs = (margin[~own][:, None] > margin[own][None, :]).mean()
        row = table[(table["attribute"] == "sirna_id") & (table["value"] == v)].iloc[0]
        assert row["margin_auroc"] == pytest.approx(pairs, abs=1e-12)
        assert row["nearest_prototype_accuracy"] == pytest.approx(np.mean(distances[own].argmin(axis=1) == v))
        assert row["n_heldout"] == own.sum()


def test_values_without_held_out_sites_are_not_measured(split_sites):
    (fit, a_fit), (cal, a_cal), (held, a_held) = split_sites
    keep = a_held["sirna_id"] != 3
    encode = lambda images: stain_statistics(images, range(6))
    scorer = TrustScorer().fit(encode(fit), a_fit, encode(cal), a_cal)
    table = adequacy.adequacy_table(scorer, encode(held[keep]), {a: v[keep] for a, v in a_held.items()}, 0.75)
    row = table[(table["attribute"] == "sirna_id") & (table["value"] == 3)].iloc[0]
    assert row["status"] == adequacy.NOT_MEASURED and np.isnan(row["margin_auroc"])
    assert any("siRNA 3 could not be checked" in line for line in adequacy.warnings(table))


def write(path, X, attrs, arm):
    from morphotrust.features import write_features

    n = len(X)
    meta = pd.DataFrame({"Metadata_sample_id": [f"{path.stem}{i}" for i in range(n)],
                         "Metadata_cell_type": attrs["cell_type"], "Metadata_sirna_id": attrs["sirna_id"],
                         "Metadata_condition": [f"{c}:{s}" for c, s in zip(attrs["cell_type"], attrs["sirna_id"])],
                         "Metadata_arm": arm})
    write_features(meta, X.astype(np.float32), {"encoder": "stain-stats", "feature_dim": X.shape[1]}, path)


def test_stage_flags_reach_scores_and_verdict_table(split_sites, tmp_path):
    (fit, a_fit), (cal, a_cal), (held, a_held) = split_sites
    encode = lambda images: stain_statistics(images, (0, 1))
    for name, (images, attrs) in {"train": (fit, a_fit), "calibration": (cal, a_cal),
                                  "evaluation": (held, a_held)}.items():
        write(tmp_path / f"real_{name}.parquet", encode(images), attrs, "seen")
    write(tmp_path / "generated.parquet", encode(held[:40]), {a: v[:40] for a, v in a_held.items()}, "seen")
    out = tmp_path / "trust"
    cli(["fit", "--train", str(tmp_path / "real_train.parquet"), "--calibration",
         str(tmp_path / "real_calibration.parquet"), "--out-dir", str(out)])
    cli(["adequacy", "--scorer", str(out / "scorer"), "--heldout", str(tmp_path / "real_evaluation.parquet"),
         "--min-auroc", "0.75", "--out-dir", str(out)])
    report = json.loads((out / "adequacy.json").read_text())
    assert any("siRNA 2 is not informative" in line for line in report["warnings"])
    cli(["score", "--scorer", str(out / "scorer"), "--features", str(tmp_path / "generated.parquet"),
         "--real-scores", str(out / "real_scores.parquet"), "--adequacy", str(out / "adequacy.csv"),
         "--out-dir", str(out)])
    scores = pd.read_csv(out / "generated_scores.csv")
    expected = np.where(np.isin(scores["Metadata_sirna_id"], [0, 2, 3]), adequacy.NOT_INFORMATIVE,
                        adequacy.INFORMATIVE)
    np.testing.assert_array_equal(scores["F_sirna_id_adequacy"], expected)
    assert (scores["F_cell_type_adequacy"] == adequacy.INFORMATIVE).all()
    flags = adequacy_flags(scores).set_index("condition")["F adequacy"]
    assert flags["HEPG2:2"] == "F sirna_id: not informative" and flags["HEPG2:1"] == ""

    # the run summary shows the table and names the values in warnings
    from morphotrust.report.summary import adequacy_body

    html = adequacy_body(tmp_path)
    assert "Encoder adequacy" in html and "faithfulness for siRNA 2 is not informative" in html
    assert adequacy_body(tmp_path / "nowhere") == ""
