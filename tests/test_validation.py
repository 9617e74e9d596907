"""Validation analyses on constructed data whose right answers are known."""

import json
from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd
import pytest
import yaml
from threadpoolctl import threadpool_limits

from morphotrust.errors import InputError
from morphotrust.validation import centroid, correlations, deciles, distances, kid, shift
from morphotrust.validation.cli import cli
from morphotrust.validation.summary import run_all
from morphotrust.validation.common import Table, load_space, read_table, settings
from morphotrust.validation import stats

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_blas_thread():
    """The machine is shared: small BLAS calls run several times slower with competing threads."""
    with threadpool_limits(1):
        yield
CELL_TYPES = ("HUVEC", "RPE", "U2OS")
SIRNAS = (11, 22, 33, 44)
UNSEEN = {("U2OS", 44)}


def make_world(p=16, n_real=30, n_gen=40, seed=0, effect=2.0):
    """Real cells per (cell type, siRNA) condition: mean = cell-type effect + siRNA effect, unit noise.
    Splits per condition: 18 train, 6 calibration, 6 evaluation (unseen: all evaluation)."""
    rng = np.random.default_rng(seed)
    cell_effect = {c: rng.normal(0, effect, p) for c in CELL_TYPES}
    sirna_effect = {s: rng.normal(0, effect, p) for s in SIRNAS}
    means = {f"{c}:{s}": cell_effect[c] + sirna_effect[s] for c in CELL_TYPES for s in SIRNAS}
    real = _meta([(c, s) for c in CELL_TYPES for s in SIRNAS for _ in range(n_real)])
    split = np.resize(["train"] * 18 + ["calibration"] * 6 + ["evaluation"] * 6, n_real)
    real["Metadata_split"] = np.tile(split, len(means))
    real.loc[real["Metadata_arm"] == "unseen", "Metadata_split"] = "evaluation"
    real["Metadata_site_id"] = [f"site{i}" for i in range(len(real))]
    X_real = np.stack([means[c] for c in real["Metadata_condition"]]) + rng.normal(size=(len(real), p))
    gen = _meta([(c, s) for c in CELL_TYPES for s in SIRNAS for _ in range(n_gen)])
    gen["Metadata_sample_id"] = [f"gen{i:05d}" for i in range(len(gen))]
    X_gen = np.stack([means[c] for c in gen["Metadata_condition"]]) + rng.normal(size=(len(gen), p))
    features = [f"Cells_Feature_{i}" for i in range(p)]
    return Table(real, X_real, features), Table(gen, X_gen, features), means, rng


def _meta(pairs):
    df = pd.DataFrame(pairs, columns=["Metadata_cell_type", "Metadata_sirna_id"])
    df["Metadata_condition"] = df["Metadata_cell_type"] + ":" + df["Metadata_sirna_id"].astype(str)
    df["Metadata_arm"] = ["unseen" if pair in UNSEEN else "seen" for pair in pairs]
    return df


def score(gen: Table, T, accept_fraction=0.5):
    """Give generated rows trust columns: T as given, accepted = lowest `accept_fraction` of T overall."""
    T = np.asarray(T, dtype=float)
    gen.meta["T"], gen.meta["R"], gen.meta["F"] = T, 0.5 * T, 0.5 * T
    gen.meta["accepted"] = T <= np.quantile(T, accept_fraction)
    return gen


def corrupt(gen: Table, rng, fraction=0.4, scale=3.0):
    """Replace a known fraction of generated samples by phenotype-free noise; T ranks them worst."""
    bad = rng.random(len(gen)) < fraction
    gen.X[bad] = rng.normal(size=(bad.sum(), gen.X.shape[1])) * scale
    return score(gen, rng.normal(size=len(gen)) + 4.0 * bad), bad


# --- shared statistics -------------------------------------------------------------------------------------

def test_rank_bins_are_equal_within_each_condition():
    codes = np.repeat([0, 1, 2], [20, 13, 7])
    key = np.random.default_rng(0).random(len(codes))
    bins = stats.rank_bins(codes, key, 10)
    for c in range(3):
        sizes = np.bincount(bins[codes == c], minlength=10)
        assert sizes.max() - sizes.min() <= 1 and sizes.sum() == (codes == c).sum()
        # lowest key in bin 0, highest in the last non-empty bin
        order = np.argsort(key[codes == c])
        assert np.all(np.diff(bins[codes == c][order]) >= 0)


def test_matched_random_masks_keep_per_condition_sizes():
    codes = np.repeat([0, 1, 2], [10, 5, 8])
    selected = np.zeros(len(codes), bool)
    selected[[0, 1, 2, 10, 15, 16, 17, 18]] = True
    masks = stats.matched_random_masks(codes, selected, 5, seed=3)
    for mask in masks:
        assert np.array_equal(np.bincount(codes[mask], minlength=3), np.bincount(codes[selected], minlength=3))
    assert not np.array_equal(masks[0], masks[1])
    assert np.array_equal(masks, stats.matched_random_masks(codes, selected, 5, seed=3))


def test_bootstrap_interval_covers_the_true_difference():
    rng = np.random.default_rng(1)
    delta, low, high = stats.bootstrap_mean_difference(rng.normal(1.0, 1, 400), rng.normal(0.0, 1, 800), 2000, rng)
    assert low < 1.0 < high and low < delta < high and high - low < 0.4


def test_column_pearson_and_spearman_known_values():
    rng = np.random.default_rng(2)
    A, B = rng.normal(size=(30, 4)), rng.normal(size=(30, 4))
    expected = [np.corrcoef(A[:, j], B[:, j])[0, 1] for j in range(4)]
    assert np.allclose(stats.column_pearson(A, B), expected)
    x = np.arange(10.0)
    assert stats.spearman(x, x ** 3)[0] == pytest.approx(1.0)
    assert stats.spearman(x, -x)[0] == pytest.approx(-1.0)
    assert np.isnan(stats.spearman([1, 2], [3, 4])[0])


def test_kid_of_identical_distributions_is_unbiased_and_shift_is_large():
    rng = np.random.default_rng(4)
    d, m, reps, pool = 8, 25, 400, 1000
    X, Y = rng.normal(size=(pool, d)), rng.normal(size=(pool, d))
    Z = np.concatenate([X, Y])
    K = stats.cubic_kernel(Z, Z)
    ix = stats.draw_subsets(np.arange(pool), m, reps, rng)
    iy = stats.draw_subsets(np.arange(pool, 2 * pool), m, reps, rng)
    same = stats.mmd2_subsets(K, ix, iy)
    # unbiased: the mean over many small subsets is 0 within its standard error (a biased V-statistic is not)
    assert abs(same.mean()) < 3 * same.std(ddof=1) / np.sqrt(reps)
    biased = np.array([K[a][:, a].mean() + K[b][:, b].mean() - 2 * K[a][:, b].mean() for a, b in zip(ix, iy)])
    assert biased.mean() > 10 * same.std(ddof=1) / np.sqrt(reps)
    # the direct formula on one pair agrees
    Kxx, Kyy, Kxy = (stats.cubic_kernel(Z[a], Z[b]) for a, b in ((ix[0], ix[0]), (iy[0], iy[0]), (ix[0], iy[0])))
    direct = ((Kxx.sum() - np.trace(Kxx)) + (Kyy.sum() - np.trace(Kyy))) / (m * (m - 1)) - 2 * Kxy.mean()
    assert same[0] == pytest.approx(direct)
    Z = np.concatenate([X, Y + 1.0])
    shifted = stats.mmd2_subsets(stats.cubic_kernel(Z, Z), ix[:10], iy[:10])
    assert shifted.mean() > 20 * same.std(ddof=1)


def test_energy_distance_and_mmd_zero_for_same_distribution():
    rng = np.random.default_rng(5)
    X, Y = rng.normal(size=(200, 6)), rng.normal(size=(200, 6))
    assert abs(stats.energy_distance(X, Y)) < 0.1
    assert stats.energy_distance(X, Y + 1.0) > 1.0
    h = stats.median_bandwidth(X, rng)
    assert abs(stats.rbf_mmd2(X, Y, h)) < 0.01 < stats.rbf_mmd2(X, Y + 1.0, h)


# --- centroid distance z -------------------------------------------------------------------------------------

def test_held_out_real_copies_score_z_near_zero_and_shift_scores_large():
    real, gen, _, rng = make_world(n_real=60)
    # generated = a held-out half of the real sites of each condition; reference = the other half
    held_out = real.meta.groupby("Metadata_condition").cumcount().to_numpy() % 2 == 1
    copies = real.subset(held_out)
    copies.meta["Metadata_sample_id"] = [f"copy{i}" for i in range(len(copies))]
    copies = score(copies, rng.normal(size=len(copies)))
    per_sample, per_condition = centroid.centroid_z(real.subset(~held_out), copies, seed=0)
    assert abs(per_sample["z"].mean()) < 0.3
    assert (per_condition["flag"] == "").all()
    shifted = Table(copies.meta, copies.X + 2.0, copies.features)
    per_sample, _ = centroid.centroid_z(real.subset(~held_out), shifted, seed=0)
    assert per_sample["z"].mean() > 3.0


def _perfect_generator(n_real, dims=2500, n_conditions=20, n_generated=10, seed=0):
    """Real and generated samples of each condition drawn from one Gaussian: the right answer is mean z = 0."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(n_conditions, dims))
    names = [f"c{i:02d}" for i in range(n_conditions)]

    def draw(n):
        meta = pd.DataFrame({"Metadata_condition": np.repeat(names, n), "Metadata_arm": "seen",
                             "Metadata_sample_id": [f"s{i}" for i in range(n * n_conditions)],
                             "T": 0.0, "accepted": True})
        return Table(meta, np.repeat(means, n, axis=0) + rng.normal(size=(n * n_conditions, dims)), [])

    return draw(n_real), draw(n_generated)


@pytest.mark.parametrize("n_real", [4, 24, 100])
def test_perfect_generator_gets_mean_z_near_zero_at_any_number_of_real_samples(n_real):
    """~2,500 dimensions: the default leave-one-out z is unbiased; the spec's half-split z is biased low."""
    default, half_split = [], []
    for seed in range(3):
        real, generated = _perfect_generator(n_real, seed=seed)
        default.append(centroid.centroid_z(real, generated, seed=seed)[0]["z"].mean())
        half_split.append(centroid.centroid_z(real, generated, seed=seed, method="half_split")[0]["z"].mean())
    print(f"n_real={n_real}: mean z leave-one-out {np.mean(default):+.2f}, half-split {np.mean(half_split):+.2f}")
    assert abs(np.mean(default)) < 0.3
    if n_real <= 24:  # the bias the default removes (it shrinks as 1/n)
        assert np.mean(half_split) < -1.0


def test_trust_accepted_beats_random_when_corrupted_samples_rank_worst():
    real, gen, _, rng = make_world()
    gen, bad = corrupt(gen, rng)
    per_sample, _ = centroid.centroid_z(real, gen)
    summary, masks = centroid.accepted_vs_random(per_sample, n_seeds=5, n_bootstrap=500, seed=0)
    row = summary[(summary["arm"] == "all") & (summary["metric"] == "z")].iloc[0]
    assert row["ci_high"] < 0 and row["delta"] < -2.0
    assert 0.8 < row["relative_reduction"] <= 1.0
    assert set(summary["arm"]) == {"all", "seen", "unseen"}
    # random subsets are condition-matched
    for mask in masks:
        assert (per_sample[mask].groupby("condition").size()
                == per_sample[per_sample["accepted"]].groupby("condition").size()).all()
    # and when T is unrelated to corruption, Δ is compatible with 0
    score(gen, rng.normal(size=len(gen)))
    per_sample, _ = centroid.centroid_z(real, gen)
    summary, _ = centroid.accepted_vs_random(per_sample, n_bootstrap=500)
    row = summary[(summary["arm"] == "all") & (summary["metric"] == "z")].iloc[0]
    assert row["ci_low"] < 0 < row["ci_high"]


def test_two_real_samples_per_condition_leave_z_undefined_and_flagged_not_fatal(tmp_path):
    real, gen, _, rng = make_world()
    gen = score(gen, rng.normal(size=len(gen)))
    two = real.subset((real.meta.groupby("Metadata_condition").cumcount() < 2).to_numpy())
    per_sample, per_condition = centroid.centroid_z(two, gen)
    assert per_sample["z"].isna().all() and per_condition["flag"].str.contains("two real samples").all()
    summary, masks = centroid.accepted_vs_random(per_sample, n_bootstrap=100)
    assert summary.empty and "delta" in summary.columns
    centroid.plot_centroid(per_sample, masks, summary, tmp_path / "centroid.png")
    assert (tmp_path / "centroid.png").read_bytes()[:4] == b"\x89PNG"
    assert centroid.headline(summary, per_condition)["n_flagged_conditions"] == 12


def test_small_conditions_are_flagged_not_fatal():
    real, gen, _, rng = make_world()
    gen = score(gen, rng.normal(size=len(gen)))
    conditions = real.conditions
    keep = ~(((conditions == "HUVEC:11") & (real.meta.groupby("Metadata_condition").cumcount() >= 3))
             | ((conditions == "HUVEC:22") & (real.meta.groupby("Metadata_condition").cumcount() >= 1))
             | (conditions == "RPE:11"))
    small = real.subset(keep.to_numpy())
    per_sample, per_condition = centroid.centroid_z(small, gen)
    flags = per_condition.set_index("condition")["flag"]
    assert "few real samples" in flags["HUVEC:11"]
    assert "one real sample" in flags["HUVEC:22"] and "no real samples" in flags["RPE:11"]
    assert per_sample.loc[per_sample["condition"] == "HUVEC:11", "z"].notna().all()
    assert per_sample.loc[per_sample["condition"].isin(["HUVEC:22", "RPE:11"]), "z"].isna().all()
    summary, _ = centroid.accepted_vs_random(per_sample, n_bootstrap=200)
    assert np.isfinite(summary["delta"]).all()
    kid_tables = kid.kid_analysis(small, gen, min_subset=20)
    kid_flags = kid_tables["per_condition"].set_index("condition")["flag"]
    assert "too few samples" in kid_flags["HUVEC:11"] and "too few samples" in kid_flags["RPE:11"]
    assert "small condition" in kid_flags["RPE:22"]  # m = 15 < 20
    per_condition, ranks, _ = distances.condition_distances(small, gen)
    assert "no real samples" in per_condition.set_index("condition").loc["RPE:11", "flag"]
    assert ranks.set_index("condition")["rank_energy"].isna()["RPE:11"]


# --- decile classifiers ----------------------------------------------------------------------------------------

def test_decile_accuracy_falls_when_quality_decreases_with_trust():
    real, gen, means, rng = make_world(n_gen=60, effect=1.0)
    # quality falls with T: the phenotype fades and noise grows from the best to the worst samples
    T = rng.random(len(gen))
    centre = np.stack([means[c] for c in gen.conditions])
    gen.X = centre * (1.0 - T)[:, None] + rng.normal(size=gen.X.shape) * (1.0 + 3.0 * T)[:, None]
    gen = score(gen, T)
    split = real.column("Metadata_split")
    table = deciles.decile_classifiers(gen, real.subset(split == "train"), real.subset(split == "evaluation"),
                                       n_seeds=3, max_iter=300)
    for target in ("cell_type", "condition"):
        rows = table[(table["target"] == target) & (table["test_arm"] == "all")].sort_values("decile")
        accuracy = rows["balanced_accuracy_trust"].to_numpy()
        assert stats.spearman(rows["decile"], accuracy)[0] < -0.8
        assert accuracy[0] > accuracy[-1] + 0.3
        assert accuracy[0] > rows["balanced_accuracy_random_mean"].mean()
        assert rows["balanced_accuracy_real_ceiling"].iloc[0] > 0.8
    ceiling = table[(table["target"] == "condition") & (table["test_arm"] == "unseen")]
    assert ceiling["balanced_accuracy_real_ceiling"].isna().all()  # no real training rows of unseen conditions


# --- per-feature correlations -------------------------------------------------------------------------------

def test_feature_correlations_favour_trust_when_corruption_ranks_worst():
    real, gen, _, rng = make_world(p=10)
    gen, _ = corrupt(gen, rng, fraction=0.6)
    gen.X[:, -1] = rng.normal(size=len(gen))  # a feature with no condition signal in generated samples
    table, info = correlations.feature_correlations(real, gen, n_seeds=5, seed=0)
    assert info["n_conditions_used"] == 12
    assert (table["delta"].iloc[:-1] > 0).mean() >= 0.8
    assert table["r_trust"].iloc[:-1].mean() > 0.9
    assert abs(table["r_trust"].iloc[-1]) < 0.7
    extremes = correlations.top_bottom(table, 3)
    assert list(extremes["list"]) == ["top"] * 3 + ["bottom"] * 3
    assert extremes["delta"].iloc[0] == table["delta"].max()


# --- KID ----------------------------------------------------------------------------------------------------

def test_kid_selection_gain_and_condition_ranking():
    real, gen, _, rng = make_world(p=12, n_gen=40, effect=1.0)
    # corruption grows with the condition's index, and so does its mean trust score
    names = np.unique(gen.conditions)
    level = np.searchsorted(names, gen.conditions) / (len(names) - 1)
    bad = rng.random(len(gen)) < 0.8 * level
    gen.X[bad] = rng.normal(size=(bad.sum(), gen.X.shape[1])) * 3.0
    gen = score(gen, rng.normal(0, 0.3, len(gen)) + 3.0 * bad)
    tables = kid.kid_analysis(real, gen, n_subsets=10, min_subset=5, n_seeds=3)
    ranking = tables["ranking"].set_index(["arm", "score"])
    assert ranking.loc[("all", "T"), "spearman_rho"] > 0.6  # p < 0.05 over 12 conditions
    selection = tables["selection"].set_index("arm")
    assert selection.loc["all", "relative_improvement"] > 0.5
    assert selection.loc["all", "acceptance_rate"] == pytest.approx(gen.meta["accepted"].mean())
    per_decile = tables["deciles"][tables["deciles"]["arm"] == "all"].sort_values("decile")
    assert stats.spearman(per_decile["decile"], per_decile["delta_kid_mean"])[0] > 0.8
    # same seed, same numbers
    again = kid.kid_analysis(real, gen, n_subsets=10, min_subset=5, n_seeds=3)
    pd.testing.assert_frame_equal(tables["per_condition"], again["per_condition"])


def test_delta_kid_of_held_out_real_is_near_zero():
    real, _, _, rng = make_world(n_real=80)
    held_out = real.meta.groupby("Metadata_condition").cumcount().to_numpy() % 2 == 1
    copies = real.subset(held_out)
    copies.meta["Metadata_sample_id"] = [f"copy{i}" for i in range(len(copies))]
    copies = score(copies, rng.normal(size=len(copies)))
    per_condition = kid.kid_analysis(real.subset(~held_out), copies, n_subsets=10, n_seeds=2)["per_condition"]
    shifted = Table(copies.meta, copies.X + 0.7, copies.features)
    per_condition_shifted = kid.kid_analysis(real.subset(~held_out), shifted, n_subsets=10, n_seeds=2)["per_condition"]
    typical = per_condition["delta_kid_sd"].mean() / np.sqrt(10)
    assert abs(per_condition["delta_kid"].mean()) < 3 * typical
    assert per_condition_shifted["delta_kid"].mean() > 10 * typical


# --- distances and discrimination --------------------------------------------------------------------------

def test_discrimination_ranks_true_condition_first_and_detects_wrong_phenotype():
    real, gen, means, rng = make_world()
    gen = score(gen, rng.normal(size=len(gen)))
    # the generated HUVEC:11 set shows the phenotype of HUVEC:33 (wrong siRNA)
    wrong = gen.conditions == "HUVEC:11"
    gen.X[wrong] = means["HUVEC:33"] + rng.normal(size=(wrong.sum(), gen.X.shape[1]))
    per_condition, ranks, _ = distances.condition_distances(real, gen, max_per_set=25, seed=0)
    ranks = ranks.set_index("condition")
    assert ranks.loc["HUVEC:11", "nearest_energy"] == "HUVEC:33"
    assert ranks.loc["HUVEC:11", "rank_energy"] > 1
    others = ranks.drop(index="HUVEC:11")
    assert (others["rank_energy"] == 1).all() and (others["rank_centroid"] == 1).all()
    assert (others["n_candidates"] == 12).all()
    energy = per_condition.set_index("condition")["energy_distance"]
    assert energy["HUVEC:11"] > 5 * energy.drop(index="HUVEC:11").abs().max()


def test_average_treated_cell_ranks_at_chance_level():
    real, gen, means, rng = make_world()
    gen = score(gen, rng.normal(size=len(gen)))
    gen.X = np.mean(list(means.values()), axis=0) + rng.normal(size=gen.X.shape)  # one phenotype for all
    _, ranks, _ = distances.condition_distances(real, gen)
    # every set is nearest to the one or two real conditions closest to the average: top-1 near 1/12, not 1
    assert ranks["nearest_energy"].nunique() <= 2
    assert (ranks["rank_energy"] == 1).sum() <= 2 and ranks["rank_energy"].mean() > 3


def test_copairs_average_precision_of_a_hand_ranked_query():
    """One generated query of A; by cosine similarity the real samples rank A, B, A, B: AP = (1/1 + 2/3) / 2."""
    angles = np.deg2rad([0.0, 30.0, 60.0, 90.0])  # real samples, most to least similar to the query at 0 degrees
    real_meta = pd.DataFrame({"Metadata_condition": ["A", "B", "A", "B"], "Metadata_arm": "seen"})
    real = Table(real_meta, np.stack([np.cos(angles), np.sin(angles)], axis=1), ["Cells_x", "Cells_y"])
    query = pd.DataFrame({"Metadata_condition": ["A"], "Metadata_arm": "seen", "Metadata_sample_id": ["g0"],
                          "T": [0.0], "accepted": [True]})
    ap = distances.retrieval_average_precision(real, Table(query, np.array([[1.0, 0.0]]), real.features))
    assert ap["average_precision"].iloc[0] == pytest.approx((1 + 2 / 3) / 2)
    assert (ap["n_pos_pairs"].iloc[0], ap["n_total_pairs"].iloc[0]) == (2, 4)


def test_retrieval_map_accepted_beats_random_when_corrupted_samples_rank_worst():
    real, gen, _, rng = make_world()
    gen, bad = corrupt(gen, rng, fraction=0.5)
    per_sample, per_condition, headline = distances.retrieval_map(real, gen, n_seeds=3, n_bootstrap=300,
                                                                  null_size=200, seed=0)
    ap = per_sample["average_precision"].to_numpy()
    assert ap[~bad].mean() > 0.9 and ap[bad].mean() < 0.3  # chance is 1/12
    assert headline["all"]["chance_map"] == pytest.approx(1 / 12)
    assert headline["all"]["map_accepted"] > headline["all"]["map_random"] + 0.2
    assert headline["all"]["delta_map_ci"][0] > 0
    assert len(per_condition) == 12 and per_condition["below_corrected_p"].all()
    assert set(headline) >= {"all", "seen", "unseen"}


# --- graded shift ------------------------------------------------------------------------------------------

def test_hamming_distance_to_training_support():
    support = pd.DataFrame({"Metadata_cell_type": ["HUVEC", "HUVEC", "RPE"], "Metadata_sirna_id": [1, 2, 1]})
    conditions = pd.DataFrame({"Metadata_cell_type": ["HUVEC", "RPE", "RPE", "U2OS", "HUVEC", "U2OS"],
                               "Metadata_sirna_id": [1, 2, 1, 1, 9, 9]})
    hamming, novel = shift.hamming_to_support(conditions, support)
    assert hamming.tolist() == [0, 1, 0, 1, 1, 2]
    assert novel.tolist() == [0, 0, 0, 1, 1, 2]


def test_graded_shift_table_and_spearman():
    rng = np.random.default_rng(6)
    pairs = [("HUVEC", 1), ("HUVEC", 2), ("RPE", 1), ("RPE", 2), ("U2OS", 1), ("U2OS", 3)]
    scores = _meta(pairs * 20)
    scores["Metadata_arm"] = ["seen" if p in pairs[:3] else "unseen" for p in pairs * 20]
    support = scores[scores["Metadata_arm"] == "seen"][["Metadata_cell_type", "Metadata_sirna_id"]]
    hamming, _ = shift.hamming_to_support(scores, support)
    scores["T"] = hamming + rng.normal(0, 0.2, len(scores))
    scores["R"], scores["F"], scores["accepted"] = scores["T"], 0.0, scores["T"] < 0.5
    table = shift.graded_shift(scores, support)
    assert table.set_index("condition")["hamming_distance"].to_dict() == {
        "HUVEC:1": 0, "HUVEC:2": 0, "RPE:1": 0, "RPE:2": 1, "U2OS:1": 1, "U2OS:3": 2}
    assert shift.headline(table)["spearman_hamming_vs_mean_T"] > 0.8


# --- files, command line, config ------------------------------------------------------------------------------

def _write_inputs(tmp_path, real: Table, gen: Table, split_encoder=True):
    """The stage outputs the analyses read: CP tables, encoder tables (per split) and trust scores."""
    def frame(table, prefix):
        features = pd.DataFrame(table.X.astype(np.float32 if prefix == "Feature_" else np.float64),
                                columns=[f"Feature_{i:04d}" for i in range(table.X.shape[1])] if prefix == "Feature_"
                                else table.features)
        return pd.concat([table.meta.filter(like="Metadata_"), features], axis=1)

    paths = {"cp_real": tmp_path / "real_clean.parquet", "cp_generated": tmp_path / "generated_clean.parquet",
             "encoder_generated": tmp_path / "generated.parquet", "trust": tmp_path / "generated_scores.parquet"}
    frame(real, "").to_parquet(paths["cp_real"])
    frame(gen, "").to_parquet(paths["cp_generated"])
    frame(gen, "Feature_").to_parquet(paths["encoder_generated"])
    encoder_real = []
    for split in ("train", "calibration", "evaluation"):
        path = tmp_path / f"real_{split}.parquet"
        part = frame(real, "Feature_")
        part[part["Metadata_split"] == split].to_parquet(path)
        encoder_real.append(path)
    paths["encoder_real"] = encoder_real
    trust = gen.meta.drop(columns=["corrupt"], errors="ignore").copy()
    trust["F_cell_type"] = trust["F"]
    trust.to_parquet(paths["trust"])
    return paths


def test_run_all_writes_every_table_plot_and_summary(tmp_path):
    real, gen, _, rng = make_world(p=8, n_gen=20)
    gen, _ = corrupt(gen, rng)
    paths = _write_inputs(tmp_path, real, gen)
    out = tmp_path / "validation"
    cfg = {"centroid": {"n_bootstrap": 200}, "n_random_seeds": 2, "deciles": {"max_iter": 200}}
    summary = run_all(paths["cp_real"], paths["cp_generated"], paths["encoder_real"], paths["encoder_generated"],
                      paths["trust"], out, cfg)
    assert summary["centroid"]["all"]["delta_z"] < 0
    assert summary["distances_cp"]["all"]["top1_fraction_energy"] == pytest.approx(1.0)
    assert summary["kid"]["selection_all"]["relative_improvement"] > 0
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    smk = (REPO / "workflow" / "rules" / "validation.smk").read_text()
    expected = [line.split('"')[1].split("/")[-1] for line in smk.splitlines() if '"results/validation/' in line]
    expected = {name.replace("{space}", space) for name in expected for space in ("cp", "encoder")}
    # the scorer comparison and the corruptions need the baselines stage and the images (tests/test_baselines.py)
    expected -= {f"{name}.{ext}" for name in ("scorers", "corruptions") for ext in ("csv", "png", "json")}
    written = {p.name for p in out.iterdir()}
    assert expected <= written, expected - written
    for png in out.glob("*.png"):
        assert png.read_bytes()[:4] == b"\x89PNG"
    table = pd.read_csv(out / "deciles_encoder.csv")
    assert set(table["target"]) == {"cell_type", "condition"} and table["decile"].max() == 10


def test_cli_runs_an_analysis_and_reports_bad_input(tmp_path, capsys):
    real, gen, _, rng = make_world(p=6, n_gen=12)
    gen = score(gen, rng.normal(size=len(gen)))
    paths = _write_inputs(tmp_path, real, gen)
    out = tmp_path / "out"
    cli(["distances", "--space", "encoder", "--real", *map(str, paths["encoder_real"]),
         "--generated", str(paths["encoder_generated"]), "--trust", str(paths["trust"]),
         "--config", json.dumps({"distances": {"max_per_set": 10}}), "--out-dir", str(out)])
    assert (out / "discrimination_encoder.csv").exists() and (out / "distances_encoder.png").exists()
    assert "top1_fraction_energy" in capsys.readouterr().out
    # a generated sample without a trust score
    trust = pd.read_parquet(paths["trust"]).iloc[1:]
    trust.to_parquet(tmp_path / "partial.parquet")
    with pytest.raises(InputError, match=r"partial\.parquet.*1 generated sample\(s\) have no trust score"):
        load_space("cp", paths["cp_real"], paths["cp_generated"], tmp_path / "partial.parquet")
    # a real table without its split column
    pd.read_parquet(paths["cp_real"]).drop(columns="Metadata_split").to_parquet(tmp_path / "nosplit.parquet")
    with pytest.raises(InputError, match=r"nosplit\.parquet.*Metadata_split"):
        load_space("cp", tmp_path / "nosplit.parquet", paths["cp_generated"], paths["trust"])
    # feature columns that do not match
    renamed = pd.read_parquet(paths["cp_generated"]).rename(columns={"Cells_Feature_0": "Other"})
    renamed.to_parquet(tmp_path / "g.parquet")
    with pytest.raises(InputError, match="Other"):
        load_space("cp", paths["cp_real"], tmp_path / "g.parquet", paths["trust"])


def test_config_section_matches_library_defaults():
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    section = schema["properties"]["validation"]

    def defaults(node):
        if node.get("type") == "object":
            return {key: defaults(child) for key, child in node["properties"].items()}
        return node["default"]

    assert defaults(section) == settings({})  # the code fills in exactly the schema's defaults
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["validation"]
    jsonschema.validate(config, section)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**config, "kid": {"max_subzet": 5}}, section)


def test_encoder_space_leaves_appended_stain_statistics_out(tmp_path):
    """features.statistics append: the sidecar's feature_blocks name the encoder's columns; KID and the other
    encoder-space analyses read only those. A table without blocks keeps every Feature_ column."""
    rng = np.random.default_rng(0)
    table = pd.DataFrame(rng.normal(size=(6, 5)), columns=[f"Feature_{i:04d}" for i in range(5)])
    table = table.assign(Metadata_condition="HUVEC:1", Metadata_arm="seen", Metadata_cell_type="HUVEC",
                         Metadata_split="train")
    table.to_parquet(tmp_path / "real_train.parquet")
    assert read_table(tmp_path / "real_train.parquet", "encoder", "real").features == list(table.columns[:5])
    blocks = [{"name": "encoder", "start": 0, "stop": 3}, {"name": "statistics_w1", "start": 3, "stop": 5}]
    (tmp_path / "real_train.json").write_text(json.dumps({"feature_blocks": blocks}))
    kept = read_table(tmp_path / "real_train.parquet", "encoder", "real")
    assert kept.features == list(table.columns[:3])
    assert np.array_equal(kept.X, table.iloc[:, :3].to_numpy())
    only = [{"name": f"statistics_w{s}", "start": 2 * s - 2, "stop": 2 * s} for s in (1, 2)]
    (tmp_path / "real_train.json").write_text(json.dumps({"feature_blocks": only[:1] + [dict(only[1], stop=5)]}))
    assert len(read_table(tmp_path / "real_train.parquet", "encoder", "real").features) == 5
