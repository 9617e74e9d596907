"""Baseline scorers beside T (issue 24): each against a direct computation on small arrays; the pooled ΔKID,
the per-sample Spearman interval and the scorer comparison table; the comparison and corruption tables of the
demo's run."""

import json
import re
from html import unescape
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from morphotrust.trust.baselines import (SCORERS, DensityScorer, KNNScorer, LinearProbeScorer, PrecisionScorer,
                                   RealismScorer)
from morphotrust.errors import InputError
from morphotrust.validation import centroid, corruptions, kid, scorers, stats
from morphotrust.validation.common import Table, settings


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_blas_thread():
    with threadpool_limits(1):
        yield


def world(n=60, d=6, seed=0):
    """Real-like features with two attributes whose values shift the mean; attrs as a dict of arrays."""
    rng = np.random.default_rng(seed)
    cell = rng.choice(["A", "B", "C"], n)
    sirna = rng.choice([1, 2, 3, 4], n)
    shift = {v: rng.normal(0, 1.5, d) for v in [*"ABC", 1, 2, 3, 4]}
    X = 3.0 + rng.normal(size=(n, d)) + np.stack([shift[c] + shift[s] for c, s in zip(cell, sirna)])
    return X, {"cell_type": cell, "sirna_id": sirna}


def unit(X):
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def test_linear_probe_matches_sklearn_logistic_regression():
    X, attrs = world()
    Q, requested = world(n=15, seed=1)
    probe_free = LinearProbeScorer(energy="free_energy", C=0.5).fit(X, attrs)
    probe_nll = LinearProbeScorer(energy="target_nll", C=0.5).fit(X, attrs)
    free, nll = np.zeros(len(Q)), np.zeros(len(Q))
    for a in ("cell_type", "sirna_id"):
        values = sorted(set(attrs[a]))
        direct = LogisticRegression(C=0.5, max_iter=1000).fit(unit(X), attrs[a])
        assert list(direct.classes_) == values
        free -= np.log(np.exp(direct.decision_function(unit(Q))).sum(axis=1))
        nll -= direct.predict_log_proba(unit(Q))[np.arange(len(Q)), [values.index(v) for v in requested[a]]]
    assert np.allclose(probe_free.score(Q, requested), free, atol=1e-6)
    assert np.allclose(probe_nll.score(Q, requested), nll, atol=1e-6)
    # the free energy ignores the requested values, −log p does not
    wrong = {**requested, "sirna_id": np.where(requested["sirna_id"] == 1, 2, 1)}
    assert np.allclose(probe_free.score(Q, wrong), free)
    assert not np.allclose(probe_nll.score(Q, wrong), nll)
    # calibration split: κ is the quantile of the calibration scores, accept at or below it
    C, cal_attrs = world(n=40, seed=2)
    fitted = LinearProbeScorer(energy="target_nll", quantile=0.9).fit(X, attrs, C, cal_attrs)
    assert fitted.calibration_source_ == "calibration_split"
    assert fitted.threshold_ == pytest.approx(np.quantile(fitted.score(C, cal_attrs), 0.9))
    assert fitted.accept(fitted.calibration_scores_).mean() == pytest.approx(0.9, abs=1 / 40)


def brute_knn(X_fit, attrs, Q, requested, k, leave_self_out=False):
    Y, Z = unit(X_fit), unit(Q)
    out = np.zeros(len(Q))
    for i in range(len(Q)):
        for a in attrs:
            distances = [1.0 - Z[i] @ Y[j] for j in range(len(Y))
                         if attrs[a][j] == requested[a][i] and not (leave_self_out and j == i)]
            out[i] += sorted(distances)[min(k, len(distances)) - 1]
    return out


def test_knn_matches_brute_force_neighbours_including_a_short_value_and_the_fit_pool():
    X, attrs = world(n=40)
    attrs["cell_type"][:2] = "D"  # a value with 2 < k fitting sites: its farthest one is taken
    Q, requested = world(n=12, seed=3)
    requested["cell_type"][0] = "D"
    scorer = KNNScorer(k=5).fit(X, attrs)
    assert np.allclose(scorer.score(Q, requested), brute_knn(X, attrs, Q, requested, 5))
    assert {"attribute": "cell_type", "value": "D", "n_fit": 2} in scorer.short_values_
    # calibrated on the fitting pool: no site is its own neighbour
    assert scorer.calibration_source_ == "fit_pool"
    assert np.allclose(scorer.calibration_scores_, brute_knn(X, attrs, X, attrs, 5, leave_self_out=True))
    with pytest.raises(InputError, match="'E'"):
        scorer.score(Q[:1], {"cell_type": np.array(["E"]), "sirna_id": requested["sirna_id"][:1]})


def brute_balls(X_fit, Q, k, leave_self_out=False):
    """(realism, precision, density) per query row, by explicit loops over the real balls."""
    Y, Z = unit(X_fit), unit(Q)
    radii = np.array([sorted(np.linalg.norm(Y - y, axis=1))[k] for y in Y])  # [0] is the site itself
    kept = radii <= np.median(radii)
    realism, precision, density = [], [], []
    for i, z in enumerate(Z):
        own = [j for j in range(len(Y)) if not (leave_self_out and j == i)]
        d = {j: np.linalg.norm(z - Y[j]) for j in own}
        realism.append(max(radii[j] / d[j] for j in own if kept[j]))
        inside = [j for j in own if d[j] <= radii[j]]
        precision.append(float(bool(inside)))
        density.append(len(inside) / (k * len(Y)))
    return np.array(realism), np.array(precision), np.array(density)


def test_realism_precision_density_match_brute_force_balls():
    X, _ = world(n=50)
    Q = np.concatenate([world(n=10, seed=4)[0], 3.0 + 8.0 * np.random.default_rng(5).normal(size=(5, 6))])
    realism, _, _ = brute_balls(X, Q, 3)
    _, precision, density = brute_balls(X, Q, 5)
    assert np.allclose(RealismScorer(k=3).fit(X).score(Q), -realism)
    assert np.allclose(PrecisionScorer(k=5).fit(X).score(Q), -precision)
    assert np.allclose(DensityScorer(k=5, chunk_size=4).fit(X).score(Q), -density)  # chunks agree
    assert 0 < precision.mean() < 1  # the far-off rows fall outside every ball
    # fit pool: a site is not inside its own ball
    _, _, own = brute_balls(X, X, 5, leave_self_out=True)
    assert np.allclose(DensityScorer(k=5).fit(X).calibration_scores_, -own)


def test_a_score_that_accepts_all_but_a_few_real_sites_has_a_degenerate_threshold():
    """Precision is 0/1: when more than 5% of real calibration sites fall outside every ball, κ = P95 = 0 and
    every image is accepted, whatever it looks like; the comparison table flags it."""
    rng = np.random.default_rng(6)
    X, C = rng.normal(size=(40, 30)), rng.normal(size=(40, 30))
    precision = PrecisionScorer(k=1).fit(X, None, C)
    assert (precision.calibration_scores_ == 0).mean() > 0.05 and precision.threshold_ == 0.0
    noise = rng.normal(size=(20, 30)) * 5.0
    assert precision.accept(precision.score(noise)).all()
    table, _ = scorers_table(rng, {"precision": (0.0, np.ones(24, bool)), "T": (1.0, np.arange(24) % 2 == 0)})
    flags = table.set_index(["scorer", "arm"])["degenerate"]
    assert flags["precision", "all"] and not flags["T", "all"]


def test_bad_parameters_name_the_estimator():
    with pytest.raises(InputError, match=r"KNNScorer\(k=...\)"):
        KNNScorer(k=0).fit(*world())
    with pytest.raises(InputError, match="energy"):
        LinearProbeScorer(energy="logits").fit(*world())
    with pytest.raises(InputError, match="not fitted"):
        DensityScorer().score(np.ones((2, 3)))


# --- pooled ΔKID, Spearman interval, comparison table -------------------------------------------------------

def pooled_world(seed=0, n_real=8, n_gen=6, conditions=("a", "b", "c"), d=4, shift=0.0):
    rng = np.random.default_rng(seed)
    centre = {c: rng.normal(0, 2, d) for c in conditions}

    def table(n, prefix, offset):
        cond = np.repeat(conditions, n)
        meta = pd.DataFrame({"Metadata_condition": cond, "Metadata_arm": np.where(cond == "c", "unseen", "seen"),
                             "Metadata_sample_id": [f"{prefix}{i}" for i in range(len(cond))]})
        return Table(meta, np.stack([centre[c] for c in cond]) + rng.normal(size=(len(cond), d)) + offset, [])

    return table(n_real, "r", 0.0), table(n_gen, "g", shift)


def direct_pooled_delta_kid(real, generated, members, seed):
    """ΔKID_pooled by its definition, with explicit means over kernel values; `members` may repeat a row (a
    bootstrap multiset): the within-set mean then runs over pairs of distinct rows."""
    k = stats.cubic_kernel
    names = sorted(set(generated.conditions))
    halves = {c: kid.real_halves(np.flatnonzero(real.conditions == c), i, seed) for i, c in enumerate(names)}
    chosen = generated.conditions[members]
    w = {c: np.mean(chosen == c) for c in names}
    X = generated.X[members]
    e_xx = np.mean([k(X[i:i + 1], X[j:j + 1])[0, 0] for i in range(len(X)) for j in range(len(X))
                    if members[i] != members[j]])
    e_xa = sum(w[c] * k(X, real.X[halves[c][0]]).mean() for c in names)

    def block_mean(first, second, c, e):
        K = k(real.X[halves[c][first]], real.X[halves[e][second]])
        return (K.sum() - np.trace(K)) / (len(K) * (len(K) - 1)) if first == second and c == e else K.mean()

    # the real within-half mean weighs condition pairs as the distinct pairs of `members` fall
    pairs = {(c, e): sum(chosen[i] == c and chosen[j] == e and members[i] != members[j]
                         for i in range(len(X)) for j in range(len(X))) for c in names for e in names}
    e_bb = sum(n * block_mean(1, 1, c, e) for (c, e), n in pairs.items()) / sum(pairs.values())
    e_ba = sum(w[c] * w[e] * block_mean(0, 1, c, e) for c in names for e in names)
    return (e_xx - e_bb) - 2 * (e_xa - e_ba)


def test_pooled_delta_kid_matches_its_definition_also_for_a_bootstrap_multiset():
    real, generated = pooled_world()
    pooled = kid.PooledKID.build(real, generated, seed=3)
    rows = np.array([0, 1, 2, 6, 7, 12, 13, 14, 15])
    assert pooled.delta_kid(rows)[0] == pytest.approx(direct_pooled_delta_kid(real, generated, rows, 3))
    counts = np.array([[2, 1, 0, 1, 1, 3, 0, 1, 1], [1] * 9], float)
    members = np.repeat(rows, counts[0].astype(int))
    assert pooled.delta_kid(rows, counts) == pytest.approx(
        [direct_pooled_delta_kid(real, generated, members, 3), pooled.delta_kid(rows)[0]])


def test_pooled_delta_kid_of_the_real_half_itself_is_zero_at_uneven_counts():
    """Uneven per-condition counts (as trust acceptance leaves them) must not bias ΔKID_pooled: a "generated" set
    that is the real B half itself, 5 / 2 / 3 samples per condition, is exactly as far from A as B is."""
    real, _ = pooled_world(n_real=10)
    keep = np.r_[0:10, 10:14, 20:25]  # 10, 4 and 5 real samples
    real = real.subset(keep)
    b_rows = np.concatenate([kid.real_halves(np.flatnonzero(real.conditions == c), i, 0)[1]
                             for i, c in enumerate("abc")])
    generated = real.subset(b_rows)
    pooled = kid.PooledKID.build(real, generated, seed=0)
    assert np.bincount(pooled.codes).tolist() == [5, 2, 3]
    value = pooled.delta_kid(np.arange(len(generated)))[0]
    assert abs(value) < 1e-9 * np.abs(pooled.gram).mean()


def test_pooled_gain_is_near_zero_for_real_like_samples_and_positive_for_a_good_selection():
    real, generated = pooled_world(n_real=30, n_gen=30, d=6)
    rng = np.random.default_rng(1)
    bad = rng.random(len(generated)) < 0.5
    generated.X[bad] += 3.0  # half the generated images are off; the "score" knows which
    pooled = kid.PooledKID.build(real, generated, seed=0)
    arms = generated.meta["Metadata_arm"].to_numpy()
    good = pooled_gain_row(pooled, arms, ~bad)
    assert good["pooled_relative_improvement"] > 0.5
    assert good["pooled_relative_ci_low"] > 0 and good["pooled_relative_ci_low"] < good["pooled_relative_improvement"]
    coin = pooled_gain_row(pooled, arms, rng.random(len(generated)) < 0.5)
    assert coin["pooled_relative_ci_low"] < 0 < coin["pooled_relative_ci_high"]


def pooled_gain_row(pooled, arms, accepted):
    table = kid.pooled_selection(pooled, arms, accepted, n_seeds=3, n_bootstrap=200, max_subset=40, seed=0)
    return table.set_index("arm").loc["all"]


def test_stratified_counts_keep_each_condition_size():
    codes = np.repeat([4, 0, 2], [3, 5, 2])
    counts = kid._stratified_counts(codes, 50, 100, np.random.default_rng(0))
    for code in (0, 2, 4):
        assert (counts[:, codes == code].sum(axis=1) == (codes == code).sum()).all()
    halved = kid._stratified_counts(codes, 10, 5, np.random.default_rng(0))
    assert (halved.sum(axis=1) == 1 + 2 + 3 - 1).all()  # rint(1.5) = 2, rint(2.5) = 2, 1: at least one each


def test_bootstrap_spearman_interval():
    rng = np.random.default_rng(2)
    x = rng.normal(size=120)
    y = x + rng.normal(size=120)
    rho, low, high, n = stats.bootstrap_spearman(x, y, 1000, rng)
    assert rho == pytest.approx(scipy_stats.spearmanr(x, y).statistic) and n == 120
    assert low < rho < high and 0.4 < low and high < 0.85
    assert stats.bootstrap_spearman(x, x ** 3, 200, rng)[1:3] == (1.0, 1.0)
    assert np.isnan(stats.bootstrap_spearman([1, 2], [3, 4], 100, rng)[0])


def scorers_table(rng, scores_by_name):
    """scorers.compare on a small constructed run: `scores_by_name` = {name: (threshold, accepted)}."""
    real, generated = pooled_world(n_real=8, n_gen=8, seed=int(rng.integers(1000)))
    ids = generated.meta["Metadata_sample_id"].to_numpy()
    table = generated.meta.copy()
    for name, (_, accepted) in scores_by_name.items():
        table[name] = rng.normal(size=len(table)) - accepted
        table[f"accepted_{name}"] = accepted
    per_sample = pd.DataFrame({"sample_id": ids, "condition": generated.conditions, "arm": table["Metadata_arm"],
                               "z": rng.normal(size=len(ids))})
    per_sample["distance"] = per_sample["excess_distance"] = per_sample["z"] + 1.0
    per_sample.loc[::5, ["z", "distance", "excess_distance"]] = np.nan  # not measured by CellProfiler
    kid_per_condition = pd.DataFrame({"condition": ["a", "b", "c"], "arm": ["seen", "seen", "unseen"],
                                      "delta_kid": [0.1, 0.3, 0.2]})
    DEFAULTS = settings({})
    cfg = {**DEFAULTS, "n_random_seeds": 2, "kid": {**DEFAULTS["kid"], "n_bootstrap": 100},
           "centroid": {**DEFAULTS["centroid"], "n_bootstrap": 200}}
    pooled = kid.PooledKID.build(real, generated, 0)
    return scorers.compare(table, {n: t for n, (t, _) in scores_by_name.items()}, 0.95, per_sample,
                           kid_per_condition, pooled, ids, generated.meta["Metadata_arm"].to_numpy(), cfg), \
        (table, per_sample, pooled, generated, cfg)


def test_comparison_table_scores_t_exactly_as_the_t_analyses_do():
    rng = np.random.default_rng(7)
    accepted = rng.random(24) < 0.4
    table, (scores, per_sample, pooled, generated, cfg) = scorers_table(rng, {"T": (0.5, accepted)})
    row = table.set_index(["scorer", "arm"]).loc["T"]
    assert list(row.index) == ["all", "seen", "unseen"] and set(table["label"]) == {SCORERS["T"][0]}
    # the same functions and seeds as centroid.run and kid.run: identical numbers
    chosen = per_sample.assign(accepted=accepted, T=scores["T"])
    delta = centroid.accepted_vs_random(chosen, 2, 200, 0)[0].query("metric == 'z'").set_index("arm")
    ranking = centroid.ranking_by_arm(chosen, "T", 200, 0).set_index("arm")
    pooled_table = kid.pooled_selection(pooled, generated.meta["Metadata_arm"].to_numpy(), accepted, 2, 100,
                                        500, 0).set_index("arm")
    for arm in ("all", "seen", "unseen"):
        assert row.loc[arm, "delta_z"] == delta.loc[arm, "delta"]
        assert row.loc[arm, "spearman_z"] == ranking.loc[arm, "spearman_rho"]
        assert row.loc[arm, "kid_gain"] == pooled_table.loc[arm, "pooled_relative_improvement"]
    assert row.loc["all", "acceptance"] == pytest.approx(accepted.mean())
    assert row.loc["all", "n_measured"] == np.isfinite(per_sample["z"]).sum()
    assert row.loc["seen", "n_conditions"] == 2 and np.isnan(row.loc["seen", "rho_conditions"])  # < 3 conditions
    assert row.loc["all", "rho_conditions"] == pytest.approx(
        scipy_stats.spearmanr(scores.groupby("Metadata_condition")["T"].mean(), [0.1, 0.3, 0.2]).statistic)


def test_corruptions_change_what_they_say():
    rng = np.random.default_rng(0)
    images = rng.integers(1, 255, size=(8, 6, 16, 16), dtype=np.uint8)
    zeroed = corruptions.corrupt(images, "stain_zeroed", rng)
    for i in range(8):
        assert not zeroed[i, i % 6].any() and np.array_equal(np.delete(zeroed[i], i % 6, 0), np.delete(images[i], i % 6, 0))
    swapped = corruptions.corrupt(images, "stains_swapped", rng)
    assert all(sorted(map(bytes, swapped[i])) == sorted(map(bytes, images[i])) for i in range(8))
    assert not np.array_equal(swapped, images)
    dim = corruptions.corrupt(images, "dim", rng)
    assert np.allclose(dim, np.rint(images * 0.4), atol=1)
    assert corruptions.corrupt(images, "blur", rng).std() < images.std()
    wrong = corruptions.wrong_values(np.array([1, 2, 3, 1]), [1, 2, 3], rng)
    assert (wrong != np.array([1, 2, 3, 1])).all()
    collapsed = corruptions.collapsed_rows(np.array(["a", "a", "b", "a", "b"]), rng)
    assert len(set(collapsed[[0, 1, 3]])) == 1 and len(set(collapsed[[2, 4]])) == 1


# --- the demo's run -------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_demo_compares_every_scorer_and_corruption(tiny_demo_run):
    validation = tiny_demo_run / "results" / "validation"
    table = pd.read_csv(validation / "scorers.csv")
    assert set(table["scorer"]) == set(SCORERS) and set(table["arm"]) == {"all", "seen", "unseen"}
    t = table[table["scorer"] == "T"].set_index("arm")
    trust = pd.read_parquet(tiny_demo_run / "results" / "trust" / "generated_scores.parquet")
    assert t.loc["all", "acceptance"] == pytest.approx(trust["accepted"].mean())
    assert (table["degenerate"] == (table["acceptance"] >= 0.95)).all()
    # T's row is the T-only analyses' figures (issue 22 point 3: summary.json carries them)
    summary = json.loads((validation / "summary.json").read_text())
    def number(value):  # summary.json writes a missing number as null
        return np.nan if value is None else value

    pooled = summary["kid"]["selection_all"]["pooled"]
    assert t.loc["all", "kid_gain"] == pytest.approx(number(pooled["pooled_relative_improvement"]), nan_ok=True)
    for arm in ("seen", "unseen"):
        if arm in summary["centroid"]:
            assert t.loc[arm, "spearman_z"] == pytest.approx(number(summary["centroid"][arm]["spearman_T_z"]),
                                                             nan_ok=True)
    corrupted = pd.read_csv(validation / "corruptions.csv")
    assert set(corrupted["corruption"]) == set(corruptions.CORRUPTIONS)
    assert set(corrupted["scorer"]) == set(SCORERS)
    assert corrupted["auroc"].between(0, 1).all()
    # on the demo's encoder T catches every image defect and wrong label (measured 0.91-1.00 on this tiny demo)
    caught = corrupted[(corrupted["scorer"] == "T") & (corrupted["corruption"] != "mode_collapse")]
    assert (caught["auroc"] > 0.85).all(), caught
    html = (tiny_demo_run / "results" / "report" / "summary.html").read_text()
    assert "Is T better than simpler scores?" in html and "Which defects each score catches" in html


def test_paper_rows_are_printed_beside_the_run_s_own(tmp_path):
    from morphotrust.report.scorers import paper_section, read_paper_figures

    figures = read_paper_figures(REPO / "resources" / "paper" / "arxiv_2606.09601_rxrx1.yaml")
    validation = tmp_path / "validation"
    validation.mkdir()
    pd.DataFrame({"arm": ["all"], "acceptance_rate": [0.12], "pooled_relative_improvement": [0.25]}
                 ).to_csv(validation / "kid_selection.csv", index=False)
    pd.DataFrame({"arm": ["all"] * 3, "score": ["T", "R", "F"], "spearman_rho": [0.61, 0.52, 0.33]}
                 ).to_csv(validation / "kid_ranking.csv", index=False)
    pd.DataFrame({"arm": ["seen"], "metric": ["z"], "mean_accepted": [0.7], "mean_random": [1.4]}
                 ).to_csv(validation / "centroid.csv", index=False)
    html = paper_section(tmp_path, figures)
    cells = [[unescape(c) for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row)]
             for row in re.findall(r"<tr[^>]*>(.*?)</tr>", html)]
    rows = pd.DataFrame(cells[1:], columns=cells[0])
    this_run, paper = rows[rows["figures"] == "this run"].set_index("arm"), rows[rows["figures"] != "this run"]
    assert this_run.loc["all", "accepted"] == "12%" and this_run.loc["all", "ΔKID gain"] == "+25.0%"
    assert this_run.loc["all", "ρ(T)"] == "0.61" and this_run.loc["seen", "centroid z random"] == "1.4"
    paper = paper.set_index("arm")
    assert paper.loc["all", "accepted"] == "4%" and paper.loc["all", "ΔKID gain"] == "+39.4%"
    assert paper.loc["all", "ρ(F)"] == "0.68" and paper.loc["unseen", "centroid z accepted"] == "0.583"
    assert "not recomputed here" in html
    assert paper_section(tmp_path, None) == ""
    bad = tmp_path / "bad.yaml"
    bad.write_text("rows: 3\n")
    with pytest.raises(InputError, match=r"bad\.yaml: report\.paper_figures: not a figures file"):
        read_paper_figures(bad)
