"""The trust score on the demo, through the real workflow: data -> subsets -> features -> trust, scoring the
demo stand-ins (held-out real sites, wrong-label copies, blurred and intensity-drifted copies).

A wrong requested siRNA must raise F, a corrupted image must raise R; the AUROCs are printed (run pytest with
-s to see them) and asserted well above chance (0.5).
"""

import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from workflow_helpers import make_workdir, run_snakemake

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def scores(tmp_path_factory):
    workdir = make_workdir(tmp_path_factory.mktemp("demo_trust"), **{"generated.source": "standins"})
    run_snakemake(workdir, "--cores", "2", "results/trust/generated_scores.parquet")
    scores = pd.read_parquet(workdir / "results" / "trust" / "generated_scores.parquet")
    scores["kind"] = scores["Metadata_generator"].str.removeprefix("standin:")
    return scores


def auroc(scores, corrupted, column):
    pair = scores[scores["kind"].isin(["copy", corrupted])]
    value = roc_auc_score(pair["kind"] == corrupted, pair[column])
    print(f"AUROC {column}: {corrupted} vs held-out copy = {value:.3f} (n = {len(pair)})")
    return value


def test_wrong_condition_gets_higher_faithfulness_score(scores):
    assert auroc(scores, "wrong_label", "F_sirna_id") > 0.65
    assert auroc(scores, "wrong_label", "F") > 0.65
    # the wrong label changes only the requested siRNA: the image, hence R, is the same as the copy's
    copies = scores[scores["kind"] == "copy"].set_index("Metadata_real_site_id")
    wrong = scores[scores["kind"] == "wrong_label"].set_index("Metadata_real_site_id")
    shared = copies.index.intersection(wrong.index)
    assert len(shared) > 20
    pd.testing.assert_series_equal(copies.loc[shared, "R"], wrong.loc[shared, "R"])


def test_corrupted_images_get_higher_realism_score(scores):
    assert auroc(scores, "blur", "R") > 0.95
    assert auroc(scores, "drift", "R") > 0.75


def test_held_out_real_copies_are_mostly_accepted(scores):
    copies = scores[(scores["kind"] == "copy") & (scores["Metadata_arm"] == "seen")]
    blurred = scores[scores["kind"] == "blur"]
    # the threshold is the 95th percentile of real calibration T: held-out real sites pass at about that rate
    assert copies["accepted"].mean() > 0.8
    assert blurred["accepted"].mean() < 0.1
