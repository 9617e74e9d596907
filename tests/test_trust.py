"""Tests of the trust score (morphotrust.trust) against hand-computed values and an independent naive loop."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.covariance import LedoitWolf, ledoit_wolf_shrinkage

from morphotrust.errors import InputError
from morphotrust.trust import TrustScorer
from morphotrust.trust.cli import cli

ATTRS = ("cell_type", "sirna_id")


def clustered(rng, n, d=8, n_cell=3, n_sirna=12, sirna_p=None, offset=2.0):
    """Gaussian clusters: cell-type prototype + siRNA prototype + noise, shifted off the origin."""
    cell_protos = np.random.default_rng(100).normal(size=(n_cell, d))
    sirna_protos = np.random.default_rng(101).normal(size=(n_sirna, d)) * 0.6
    cell = rng.integers(0, n_cell, n)
    sirna = rng.choice(n_sirna, n, p=sirna_p)
    X = cell_protos[cell] + sirna_protos[sirna] + 0.8 * rng.normal(size=(n, d)) + offset
    names = np.array(["HEPG2", "HUVEC", "RPE", "U2OS"][:n_cell], dtype=object)
    return X, {"cell_type": names[cell], "sirna_id": sirna}


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    p = np.full(12, 1.0)
    p[11] = 0.03  # a rare siRNA: few calibration samples -> per-value fallback
    p /= p.sum()
    X_fit, a_fit = clustered(rng, 400, sirna_p=p)
    X_cal, a_cal = clustered(rng, 201, sirna_p=p)
    X_q, a_q = clustered(rng, 60)
    # requested conditions of the queries: random, including combinations never seen together
    a_q = {"cell_type": rng.permutation(a_q["cell_type"]), "sirna_id": rng.permutation(a_q["sirna_id"])}
    return X_fit, a_fit, X_cal, a_cal, X_q, a_q


# ------------------------------------------------------------------------------------------------------
# an independent, deliberately naive implementation of the spec (loops over samples and values)


def naive_scores(X_fit, a_fit, X_cal, a_cal, X_q, a_q, reg=1e-5, calibration="per_value", min_samples=5,
                 realism="one_sided"):
    def norm(X):
        return X / np.linalg.norm(X, axis=1, keepdims=True)

    Y, Yc, Yq = norm(X_fit), norm(X_cal), norm(X_q)
    n, d = Y.shape
    mu = Y.mean(axis=0)
    S = (Y - mu).T @ (Y - mu) / n
    alpha = ledoit_wolf_shrinkage(Y)
    sigma_inv = np.linalg.inv((1 - alpha) * S + alpha * np.trace(S) / d * np.eye(d) + reg * np.eye(d))
    models = {}
    for a in ATTRS:
        labels = np.asarray(a_fit[a])
        vocab = sorted(set(labels.tolist()))
        protos = {v: Y[labels == v].mean(axis=0) for v in vocab}
        resid = np.array([Y[i] - protos[labels[i]] for i in range(n)])
        Sw = resid.T @ resid / n
        aw = ledoit_wolf_shrinkage(resid, assume_centered=True)
        P = np.linalg.inv((1 - aw) * Sw + aw * np.trace(Sw) / d * np.eye(d) + reg * np.eye(d))
        models[a] = (vocab, protos, P)

    def raw(y, request):
        e = (y - mu) @ sigma_inv @ (y - mu)
        margins = []
        for a in ATTRS:
            vocab, protos, P = models[a]
            dist = {v: (y - protos[v]) @ P @ (y - protos[v]) for v in vocab}
            t = request[a]
            margins.append(dist[t] - min(dist[v] for v in vocab if v != t))
        return e, margins

    cal = [raw(Yc[i], {a: a_cal[a][i] for a in ATTRS}) for i in range(len(Yc))]
    E_cal = np.array([c[0] for c in cal])
    m_R, s_R = E_cal.mean(), E_cal.std(ddof=1)
    constants = {}
    for k, a in enumerate(ATTRS):
        M = np.array([c[1][k] for c in cal])
        labels = np.asarray(a_cal[a])
        pooled = (M.mean(), M.std(ddof=1))
        constants[a] = {}
        for v in models[a][0]:
            group = M[labels == v]
            if calibration == "per_value" and len(group) >= min_samples and group.std(ddof=1) > 0:
                constants[a][v] = (group.mean(), group.std(ddof=1))
            else:
                constants[a][v] = pooled

    def standardised(e, margins, request):
        z = (e - m_R) / s_R
        row = {"R": z if realism == "one_sided" else z * z}
        for k, a in enumerate(ATTRS):
            m, s = constants[a][request[a]]
            row[f"F_{a}"] = (margins[k] - m) / s
        row["F"] = sum(row[f"F_{a}"] for a in ATTRS) / len(ATTRS)
        row["T"] = row["R"] + row["F"]
        return row

    rows = []
    for i in range(len(Yq)):
        request = {a: a_q[a][i] for a in ATTRS}
        rows.append(standardised(*raw(Yq[i], request), request))
    return pd.DataFrame(rows)


def assert_close(actual: pd.DataFrame, expected: pd.DataFrame, tol=1e-9):
    assert list(actual.columns) == list(expected.columns)
    for column in expected.columns:
        a, b = actual[column].to_numpy(), expected[column].to_numpy()
        scale = max(1.0, np.abs(b).max())
        assert np.abs(a - b).max() <= tol * scale, column


# ------------------------------------------------------------------------------------------------------
# science


def test_hand_computed_mahalanobis_and_scores():
    # Fit points (±a, ±b) on the unit circle, each 10 times: mean 0, covariance diag(a², b²). Ledoit–Wolf by
    # hand (n = 40, d = 2): ‖S‖² = a⁴ + b⁴, δ = (‖S‖² − tr²/d)/d, β = (mean‖x‖⁴ − ‖S‖²)/(d n), α = β/δ.
    a, b, reg, n = 0.8, 0.6, 0.01, 40
    corners = np.array([[a, b], [a, -b], [-a, b], [-a, -b]])
    X = np.repeat(corners, 10, axis=0)
    attrs = {"side": np.where(X[:, 0] > 0, "right", "left"), "level": np.where(X[:, 1] > 0, "up", "down")}
    s2 = a**4 + b**4
    delta = (s2 - 1.0 / 2) / 2
    beta = (1.0 - s2) / (2 * n)
    alpha = beta / delta
    assert alpha == pytest.approx(0.0576 / 10 / 0.0196, rel=1e-12)
    sigma11 = (1 - alpha) * a**2 + alpha * 0.5 + reg
    sigma22 = (1 - alpha) * b**2 + alpha * 0.5 + reg
    # Within 'side': residuals (0, ±b) -> S_w = diag(0, b²), β = 0 so α_w = 0, P = diag(1/reg, 1/(b² + reg)):
    # margin of the own side = 100·[(y1 − a)² − (y1 + a)²]·sign = −4 a |y1| / reg. Likewise for 'level'.
    angles = np.deg2rad([10, 35, 60, 100, 130, 200, 250, 290, 320, 345])
    X_cal = np.c_[np.cos(angles), np.sin(angles)] * 3.0  # scaled: L2 normalisation must undo it
    cal_attrs = {"side": np.where(X_cal[:, 0] > 0, "right", "left"),
                 "level": np.where(X_cal[:, 1] > 0, "up", "down")}
    scorer = TrustScorer(attributes=("side", "level"), regularization=reg, calibration="per_attribute")
    scorer.fit(X, attrs, X_cal, cal_attrs)

    assert scorer.global_shrinkage_ == pytest.approx(alpha, rel=1e-12)
    assert scorer.shrinkage_["side"] == pytest.approx(0.0, abs=1e-12)
    y = X_cal / 3.0
    E = y[:, 0] ** 2 / sigma11 + y[:, 1] ** 2 / sigma22
    np.testing.assert_allclose(scorer.realism_energy(X_cal), E, rtol=1e-12)
    d_right = (y[:, 0] - a) ** 2 / reg + y[:, 1] ** 2 / (b**2 + reg)
    d_left = (y[:, 0] + a) ** 2 / reg + y[:, 1] ** 2 / (b**2 + reg)
    np.testing.assert_allclose(scorer.value_distances(X_cal, "side"), np.c_[d_left, d_right], rtol=1e-10)

    M_side, M_level = -4 * a * np.abs(y[:, 0]) / reg, -4 * b * np.abs(y[:, 1]) / reg
    m_R, s_R = E.mean(), E.std(ddof=1)
    query = np.array([[0.6, 0.8]])  # requested (left, up): wrong side, right level
    q_E = 0.36 / sigma11 + 0.64 / sigma22
    q_side, q_level = 4 * a * 0.6 / reg, -4 * b * 0.8 / reg
    F_side = (q_side - M_side.mean()) / M_side.std(ddof=1)
    F_level = (q_level - M_level.mean()) / M_level.std(ddof=1)
    R = (q_E - m_R) / s_R
    got = scorer.score(query, {"side": ["left"], "level": ["up"]}).iloc[0]
    assert got["R"] == pytest.approx(R, rel=1e-9)
    assert got["F_side"] == pytest.approx(F_side, rel=1e-9)
    assert got["F_level"] == pytest.approx(F_level, rel=1e-9)
    assert got["F"] == pytest.approx((F_side + F_level) / 2, rel=1e-9)
    assert got["T"] == pytest.approx(R + (F_side + F_level) / 2, rel=1e-9)


def test_ledoit_wolf_matches_sklearn(data):
    X_fit, a_fit, *_ = data
    scorer = TrustScorer(regularization=1e-3).fit(X_fit, a_fit)
    Y = X_fit / np.linalg.norm(X_fit, axis=1, keepdims=True)
    d = Y.shape[1]
    assert scorer.global_shrinkage_ == pytest.approx(ledoit_wolf_shrinkage(Y), rel=1e-10)
    np.testing.assert_allclose(scorer.covariance_, LedoitWolf().fit(Y).covariance_ + 1e-3 * np.eye(d),
                               rtol=1e-10, atol=1e-14)
    for a in ATTRS:
        labels = np.asarray(a_fit[a])
        protos = np.array([Y[labels == v].mean(axis=0) for v in scorer.values_[a]])
        codes = np.searchsorted(np.array(scorer.values_[a]), labels)
        resid = Y - protos[codes]
        assert scorer.shrinkage_[a] == pytest.approx(ledoit_wolf_shrinkage(resid, assume_centered=True), rel=1e-10)
        lw = LedoitWolf(assume_centered=True).fit(resid).covariance_ + 1e-3 * np.eye(d)
        np.testing.assert_allclose(scorer.within_covariance_[a], lw, rtol=1e-10, atol=1e-14)
        assert 0 < scorer.shrinkage_[a] < 1


@pytest.mark.parametrize("calibration", ["per_value", "per_attribute"])
@pytest.mark.parametrize("realism", ["one_sided", "two_sided"])
def test_fast_path_matches_naive_loop(data, calibration, realism):
    X_fit, a_fit, X_cal, a_cal, X_q, a_q = data
    scorer = TrustScorer(calibration=calibration, realism=realism, chunk_size=17)  # several chunks
    scorer.fit(X_fit, a_fit, X_cal, a_cal)
    expected = naive_scores(X_fit, a_fit, X_cal, a_cal, X_q, a_q, calibration=calibration, realism=realism)
    assert_close(scorer.score(X_q, a_q), expected, tol=1e-9)
    # the calibration samples, each scored with its own condition
    assert_close(scorer.calibration_scores_,
                 naive_scores(X_fit, a_fit, X_cal, a_cal, X_cal, a_cal, calibration=calibration, realism=realism))


def test_value_distances_match_loop(data):
    X_fit, a_fit, _, _, X_q, _ = data
    scorer = TrustScorer().fit(X_fit, a_fit)
    Y = X_q / np.linalg.norm(X_q, axis=1, keepdims=True)
    P, H = scorer.precision_["sirna_id"], scorer.prototypes_["sirna_id"]
    loop = np.array([[(y - h) @ P @ (y - h) for h in H] for y in Y])
    np.testing.assert_allclose(scorer.value_distances(X_q, "sirna_id"), loop, rtol=1e-9)


def test_relabelling_values_and_reordering_rows_leave_scores_unchanged(data):
    X_fit, a_fit, X_cal, a_cal, X_q, a_q = data
    reference = TrustScorer().fit(X_fit, a_fit, X_cal, a_cal).score(X_q, a_q)
    # new names in a different sort order: ints -> strings, cell types -> reversed codes
    rng = np.random.default_rng(5)
    perm = rng.permutation(12)
    rename_sirna = {v: f"si{perm[v]:02d}" for v in range(12)}
    rename_cell = {"HEPG2": "z", "HUVEC": "m", "RPE": "a"}

    def rename(attrs):
        return {"cell_type": np.array([rename_cell[v] for v in attrs["cell_type"]], dtype=object),
                "sirna_id": np.array([rename_sirna[v] for v in attrs["sirna_id"]], dtype=object)}

    order = rng.permutation(len(X_fit))
    shuffled_fit = {k: np.asarray(v)[order] for k, v in rename(a_fit).items()}
    relabelled = TrustScorer().fit(X_fit[order], shuffled_fit, X_cal, rename(a_cal)).score(X_q, rename(a_q))
    assert relabelled.columns.tolist() == reference.columns.tolist()
    assert_close(relabelled, reference, tol=1e-11)


def test_threshold_is_the_linear_quantile_of_real_calibration_T(data):
    X_fit, a_fit, X_cal, a_cal, *_ = data
    scorer = TrustScorer().fit(X_fit, a_fit, X_cal, a_cal)
    T = np.sort(scorer.calibration_scores_["T"].to_numpy())
    n = len(T)
    assert n == 201
    for q in (0.0, 0.1, 0.3337, 0.5, 0.9123, 0.95, 0.9999, 1.0):
        position = q * (n - 1)
        low = int(math.floor(position))
        high = min(low + 1, n - 1)
        expected = T[low] + (position - low) * (T[high] - T[low])
        assert scorer.threshold(q) == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert scorer.threshold_ == scorer.threshold(0.95) == T[190]  # 0.95 · 200 = 190 exactly
    accepted = scorer.accept(scorer.calibration_scores_)
    assert accepted.sum() == 191
    assert scorer.accept(np.array([T[190], np.nextafter(T[190], np.inf), np.nan])).tolist() == [True, False, False]
    with pytest.raises(InputError, match="quantile"):
        scorer.threshold(1.5)


def test_per_value_calibration_and_fallback(data):
    X_fit, a_fit, X_cal, a_cal, X_q, a_q = data
    per_value = TrustScorer(calibration="per_value", min_samples_per_value=5).fit(X_fit, a_fit, X_cal, a_cal)
    per_attribute = TrustScorer(calibration="per_attribute").fit(X_fit, a_fit, X_cal, a_cal)
    rare_count = int(np.sum(np.asarray(a_cal["sirna_id"]) == 11))
    assert 0 < rare_count < 5
    assert {"attribute": "sirna_id", "value": 11, "n_calibration": rare_count} in per_value.fallback_values_
    assert all(f["n_calibration"] < 5 for f in per_value.fallback_values_)
    assert per_attribute.fallback_values_ == []
    # the minimum is inclusive: a value with exactly min_samples_per_value samples keeps its own constants
    counts = per_value.calibration_count_["sirna_id"]
    smallest = int(counts[counts >= 5].min())
    value = int(np.flatnonzero(counts == smallest)[0])
    edge = TrustScorer(min_samples_per_value=smallest).fit(X_fit, a_fit, X_cal, a_cal)
    assert value not in [f["value"] for f in edge.fallback_values_ if f["attribute"] == "sirna_id"]
    above = TrustScorer(min_samples_per_value=smallest + 1).fit(X_fit, a_fit, X_cal, a_cal)
    assert value in [f["value"] for f in above.fallback_values_ if f["attribute"] == "sirna_id"]
    # the fallback value uses the pooled constants; the others are standardised within their own group
    mean, std = per_value.pooled_calibration_["sirna_id"]
    assert per_value.calibration_mean_["sirna_id"][11] == mean and per_value.calibration_std_["sirna_id"][11] == std
    F = per_value.calibration_scores_["F_sirna_id"].to_numpy()
    labels = np.asarray(a_cal["sirna_id"])
    for v in range(11):
        group = F[labels == v]
        assert len(group) >= 5
        assert abs(group.mean()) < 1e-10 and group.std(ddof=1) == pytest.approx(1.0, rel=1e-10)
    pooled = per_attribute.calibration_scores_["F_sirna_id"].to_numpy()
    assert abs(pooled.mean()) < 1e-10 and pooled.std(ddof=1) == pytest.approx(1.0, rel=1e-10)
    assert np.abs(per_value.score(X_q, a_q)["F"] - per_attribute.score(X_q, a_q)["F"]).max() > 1e-3


def test_calibration_source_is_recorded(data):
    X_fit, a_fit, X_cal, a_cal, *_ = data
    assert TrustScorer().fit(X_fit, a_fit).calibration_source_ == "fit_pool"
    split = TrustScorer().fit(X_fit, a_fit, X_cal, a_cal)
    assert split.calibration_source_ == "calibration_split"
    assert split.n_calibration_samples_ == len(X_cal) and split.n_fit_samples_ == len(X_fit)


def test_wrong_requested_cell_type_raises_faithfulness():
    rng = np.random.default_rng(3)
    X_fit, a_fit = clustered(rng, 600, d=24, n_cell=4, n_sirna=5)
    scorer = TrustScorer().fit(X_fit, a_fit)
    X, a = clustered(rng, 200, d=24, n_cell=4, n_sirna=5)
    truth = scorer.score(X, a)
    wrong_cell = {"cell_type": np.roll(np.asarray(a["cell_type"]), 0), "sirna_id": a["sirna_id"]}
    names = np.array(["HEPG2", "HUVEC", "RPE", "U2OS"], dtype=object)
    index = np.searchsorted(names, wrong_cell["cell_type"])
    wrong_cell["cell_type"] = names[(index + 1) % 4]  # every sample requested as another cell type
    wrong = scorer.score(X, wrong_cell)
    assert (wrong["F_cell_type"] > truth["F_cell_type"]).mean() > 0.95
    assert np.allclose(wrong["R"], truth["R"])  # realism does not depend on the request
    auroc = (wrong["T"].to_numpy()[:, None] > truth["T"].to_numpy()[None, :]).mean()
    assert auroc > 0.9


def test_float32_scoring_stays_within_documented_bound(data):
    X_fit, a_fit, X_cal, a_cal, X_q, a_q = data
    scorer = TrustScorer(regularization=1e-3).fit(X_fit, a_fit, X_cal, a_cal)
    codes = {a: np.searchsorted(np.array(scorer.values_[a]), np.asarray(a_q[a])) for a in ATTRS}
    E64, M64 = scorer._raw_scores(X_q, codes, np.float64)
    E32, M32 = scorer._raw_scores(X_q, codes, np.float32)
    u = 2.0**-24
    d = X_q.shape[1]
    g = (d + 1) * u / (1 - (d + 1) * u) + 2 * u
    centred = X_q / np.linalg.norm(X_q, axis=1, keepdims=True) - scorer.mean_
    augmented = np.c_[centred, np.ones(len(centred))]
    A = scorer.global_whitener_
    rank = A.shape[1]
    size = np.abs(augmented) @ np.abs(scorer.scoring_matrix_)
    z = centred @ A
    first = g * np.linalg.norm(size[:, :rank], axis=1)
    bound_E = 2 * np.linalg.norm(z, axis=1) * first + first**2 + (rank + 1) * u * E64
    assert np.all(np.abs(E32 - E64) <= bound_E)
    assert np.abs(E32 - E64).max() > 0  # float32 really ran
    offset = rank
    rows = np.arange(len(X_q))
    for k, a in enumerate(ATTRS):
        block = size[:, offset:offset + len(scorer.values_[a])].copy()
        own = block[rows, codes[a]]
        block[rows, codes[a]] = -np.inf
        bound_M = g * (own + block.max(axis=1)) + u * np.abs(M64[:, k])
        assert np.all(np.abs(M32[:, k] - M64[:, k]) <= bound_M), a
        offset += len(scorer.values_[a])
    scorer.score_dtype = "float32"
    assert scorer.score(X_q, a_q)["T"].dtype == np.float64


def test_save_load_round_trip_is_bit_exact(data, tmp_path):
    X_fit, a_fit, X_cal, a_cal, X_q, a_q = data
    scorer = TrustScorer(min_samples_per_value=6).fit(X_fit, a_fit, X_cal, a_cal)
    npz_path, json_path = scorer.save(tmp_path / "scorer", extra={"encoder": {"encoder": "test"}})
    assert npz_path.name == "scorer.npz" and json_path.name == "scorer.json"
    with np.load(npz_path, allow_pickle=False) as npz:  # no object arrays
        assert all(npz[k].dtype != object for k in npz.files)
    loaded = TrustScorer.load(tmp_path / "scorer.json")
    assert loaded.get_params() == scorer.get_params()
    for name, value in vars(scorer).items():
        if not name.endswith("_"):
            continue
        other = getattr(loaded, name)
        if isinstance(value, np.ndarray):
            assert value.dtype == other.dtype and value.tobytes() == other.tobytes(), name
        elif isinstance(value, pd.DataFrame):
            assert all(value[c].to_numpy().tobytes() == other[c].to_numpy().tobytes() for c in value), name
        elif isinstance(value, dict) and any(isinstance(v, np.ndarray) for v in value.values()):
            assert all(value[k].tobytes() == other[k].tobytes() for k in value), name
        else:
            assert value == other and type(value) is type(other) or list(value) == list(other), name
    assert loaded.values_["sirna_id"] == list(range(12)) and loaded.values_["cell_type"][0] == "HEPG2"
    assert loaded.extra_ == {"encoder": {"encoder": "test"}}
    a, b = scorer.score(X_q, a_q), loaded.score(X_q, a_q)
    assert all(a[c].to_numpy().tobytes() == b[c].to_numpy().tobytes() for c in a)
    assert loaded.threshold_ == scorer.threshold_
    assert json.loads(json_path.read_text())["calibration_source"] == "calibration_split"


# ------------------------------------------------------------------------------------------------------
# bad input


def test_bad_inputs_give_clear_errors(data):
    X_fit, a_fit, X_cal, a_cal, X_q, a_q = data
    bad = X_fit.copy()
    bad[[3, 7], 1] = np.nan
    bad[9, 0] = np.inf
    with pytest.raises(InputError, match=r"3 row\(s\) hold NaN or infinite.*3, 7, 9"):
        TrustScorer().fit(bad, a_fit)
    zero = X_fit.copy()
    zero[4] = 0
    with pytest.raises(InputError, match=r"all zero.*4"):
        TrustScorer().fit(zero, a_fit)
    scorer = TrustScorer().fit(X_fit, a_fit)
    with pytest.raises(InputError, match="7 dimensions but the scorer was fitted on 8"):
        scorer.score(X_q[:, :7], a_q)
    with pytest.raises(InputError, match="calibration features.*7 dimensions"):
        TrustScorer().fit(X_fit, a_fit, X_cal[:, :7], a_cal)
    unknown = {"cell_type": a_q["cell_type"], "sirna_id": np.where(np.arange(len(X_q)) == 2, 999, a_q["sirna_id"])}
    with pytest.raises(InputError, match=r"'sirna_id': value\(s\) 999 have no real sample.*first rows: 2"):
        scorer.score(X_q, unknown)
    with pytest.raises(InputError, match=r"'cell_type': value\(s\) 'U2OS'"):
        scorer.score(X_q[:1], {"cell_type": ["U2OS"], "sirna_id": [0]})
    with pytest.raises(InputError, match="calibration attributes.*'sirna_id'.*999"):
        TrustScorer().fit(X_fit, a_fit, X_cal[:2], {"cell_type": a_cal["cell_type"][:2], "sirna_id": [0, 999]})
    with pytest.raises(InputError, match=r"5 real fitting sample\(s\) given.*at least 6.*'sirna_id' with 5"):
        TrustScorer().fit(X_fit[:5], {"cell_type": ["A", "B", "A", "B", "A"], "sirna_id": np.arange(5)})
    few = {"cell_type": np.array(["A", "B"] * 6), "sirna_id": np.arange(12)}
    with pytest.raises(InputError, match=r"12 real fitting sample\(s\) given.*at least 13"):
        TrustScorer().fit(X_fit[:12], few)
    with pytest.raises(InputError, match=r"'sirna_id' has 3 values for 60 feature rows"):
        scorer.score(X_q, {"cell_type": a_q["cell_type"], "sirna_id": [1, 2, 3]})
    with pytest.raises(InputError, match=r"attribute\(s\) 'sirna_id' missing"):
        scorer.score(X_q, {"cell_type": a_q["cell_type"]})
    with pytest.raises(InputError, match=r"calibration.*'per_plate'.*per_value or per_attribute"):
        TrustScorer(calibration="per_plate").fit(X_fit, a_fit)
    with pytest.raises(InputError, match="single value"):
        TrustScorer().fit(X_fit, {"cell_type": np.full(len(X_fit), "HUVEC"), "sirna_id": a_fit["sirna_id"]})
    with pytest.raises(InputError, match="at least 2"):
        TrustScorer().fit(X_fit, a_fit, X_cal[:1], {a: np.asarray(v)[:1] for a, v in a_cal.items()})
    with pytest.raises(InputError, match="2-D numeric"):
        scorer.score(X_q[0], a_q)
    with pytest.raises(InputError, match="not fitted"):
        TrustScorer().score(X_q, a_q)


# ------------------------------------------------------------------------------------------------------
# the workflow stage CLI


def write_feature_table(path, X, meta: dict, encoder="test-encoder"):
    from morphotrust.features import write_features

    write_features(pd.DataFrame(meta), X.astype(np.float32), {"encoder": encoder, "feature_dim": X.shape[1]}, path)


def stage_meta(attrs, arm, split):
    n = len(attrs["sirna_id"])
    return {"Metadata_cell_type": np.asarray(attrs["cell_type"]), "Metadata_sirna_id": np.asarray(attrs["sirna_id"]),
            "Metadata_condition": [f"{c}:{s}" for c, s in zip(attrs["cell_type"], attrs["sirna_id"])],
            "Metadata_arm": np.asarray(arm if not isinstance(arm, str) else [arm] * n, dtype=object),
            "Metadata_split": [split] * n}


def test_cli_fit_and_score(data, tmp_path):
    X_fit, a_fit, X_cal, a_cal, X_q, a_q = data
    features = tmp_path / "features"
    # same-plate controls (arm "control") with a siRNA that no seen condition has: never part of the fit
    controls = {"cell_type": np.array(["HEPG2"] * 10, dtype=object), "sirna_id": np.full(10, 1138)}
    X_train = np.r_[X_fit, X_q[:10]]
    train_attrs = {a: np.r_[np.asarray(a_fit[a], dtype=object), controls[a]] for a in ATTRS}
    arms = ["seen"] * len(X_fit) + ["control"] * 10
    write_feature_table(features / "real_train.parquet", X_train, stage_meta(train_attrs, arms, "train"))
    write_feature_table(features / "real_calibration.parquet", X_cal, stage_meta(a_cal, "seen", "calibration"))
    gen_arm = ["seen" if (c, s) in set(zip(a_fit["cell_type"], a_fit["sirna_id"])) else "unseen"
               for c, s in zip(a_q["cell_type"], a_q["sirna_id"])]
    write_feature_table(features / "generated.parquet", X_q, stage_meta(a_q, gen_arm, "generated"))
    out = tmp_path / "trust"
    config = json.dumps({"regularization": 1e-5, "calibration": "per_value", "min_samples_per_value": 5,
                         "quantile": 0.9, "calibration_source": "calibration_split", "realism": "one_sided"})
    cli(["fit", "--train", str(features / "real_train.parquet"), "--calibration",
         str(features / "real_calibration.parquet"), "--config", config, "--out-dir", str(out), "--threads", "1"])
    threshold = json.loads((out / "threshold.json").read_text())
    assert threshold["calibration_source"] == "calibration_split" and threshold["quantile"] == 0.9
    real = pd.read_parquet(out / "real_scores.parquet")
    assert len(real) == len(X_cal) and real["accepted"].mean() == pytest.approx(0.9, abs=0.01)
    scorer = TrustScorer.load(out / "scorer")
    assert scorer.n_fit_samples_ == len(X_fit) and 1138 not in scorer.values_["sirna_id"]
    assert scorer.extra_["encoder"]["encoder"] == "test-encoder"

    cli(["score", "--scorer", str(out / "scorer"), "--features", str(features / "generated.parquet"),
         "--real-scores", str(out / "real_scores.parquet"), "--out-dir", str(out)])
    table = pd.read_parquet(out / "generated_scores.parquet")
    assert {"Metadata_condition", "Metadata_arm", "R", "F_cell_type", "F_sirna_id", "F", "T", "accepted",
            "calibration_source"} <= set(table.columns)
    assert len(table) == len(X_q) == len(pd.read_csv(out / "generated_scores.csv"))
    assert (table["accepted"] == (table["T"] <= threshold["threshold"])).all()
    assert_close(table[["R", "F_cell_type", "F_sirna_id", "F", "T"]], scorer.score(X_q, a_q), tol=1e-6)  # float32 file
    summary = pd.read_csv(out / "condition_summary.csv")
    assert summary["n"].sum() == len(X_q) and summary["Metadata_condition"].is_unique
    one = summary.iloc[0]
    rows = table[table["Metadata_condition"] == one["Metadata_condition"]]
    assert one["mean_T"] == pytest.approx(rows["T"].mean()) and one["acceptance_rate"] == rows["accepted"].mean()
    assert set(summary["Metadata_arm"]) <= {"seen", "unseen"}
    assert (out / "trust_histogram.png").stat().st_size > 5000

    # a generated request for the control-only siRNA cannot be scored: the error names file and value
    bad = {"cell_type": np.array(["HEPG2"], dtype=object), "sirna_id": np.array([1138])}
    write_feature_table(features / "bad.parquet", X_q[:1], stage_meta(bad, "unseen", "generated"))
    with pytest.raises(InputError, match=r"bad.parquet.*'sirna_id'.*1138"):
        cli(["score", "--scorer", str(out / "scorer"), "--features", str(features / "bad.parquet"),
             "--real-scores", str(out / "real_scores.parquet"), "--out-dir", str(tmp_path / "bad")])
    write_feature_table(features / "other.parquet", X_q, stage_meta(a_q, gen_arm, "generated"), encoder="other")
    with pytest.raises(InputError, match="other.parquet.*encoder"):
        cli(["score", "--scorer", str(out / "scorer"), "--features", str(features / "other.parquet"),
             "--real-scores", str(out / "real_scores.parquet"), "--out-dir", str(tmp_path / "bad")])

    # fit_pool: the calibration file is not needed and every output says so
    cli(["fit", "--train", str(features / "real_train.parquet"), "--config",
         json.dumps({"calibration_source": "fit_pool"}), "--out-dir", str(tmp_path / "pool")])
    assert json.loads((tmp_path / "pool" / "threshold.json").read_text())["calibration_source"] == "fit_pool"
    assert (pd.read_parquet(tmp_path / "pool" / "real_scores.parquet")["calibration_source"] == "fit_pool").all()
    with pytest.raises(InputError, match="unknown key"):
        cli(["fit", "--train", str(features / "real_train.parquet"), "--config", '{"quantil": 0.9}',
             "--out-dir", str(tmp_path / "pool")])


def test_singular_covariance_falls_back_to_pseudo_inverse():
    # Ledoit–Wolf shrinkage keeps real covariances positive definite; a singular one (α = 0, λ = 0) must still
    # give the pseudo-inverse rather than fail.
    from morphotrust.trust.scorer import _inverse_factor

    rng = np.random.default_rng(2)
    basis = rng.normal(size=(6, 3))
    singular = basis @ basis.T  # rank 3
    factor, method = _inverse_factor(singular)
    assert method == "pseudo_inverse" and factor.shape == (6, 3)
    np.testing.assert_allclose(factor @ factor.T, np.linalg.pinv(singular, hermitian=True), rtol=1e-8, atol=1e-10)
    factor, method = _inverse_factor(singular + np.eye(6))
    assert method == "cholesky"
    np.testing.assert_allclose(factor @ factor.T, np.linalg.inv(singular + np.eye(6)), rtol=1e-10, atol=1e-12)
