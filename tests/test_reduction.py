"""Tests of the feature reduction (morphotrust.reduction): PCA against scikit-learn, fitted on training rows
only, saved without pickle, and the reduced space keeps what the trust score needs."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.decomposition import PCA

from morphotrust.errors import InputError
from morphotrust.features import read_features, write_features
from morphotrust.reduction import FeatureReduction
from morphotrust.reduction.cli import cli
from morphotrust.trust import TrustScorer


def features(rng, n, d=40, offset=3.0):
    """Positive-mean features with a few strong directions, like pooled CNN features."""
    basis = np.random.default_rng(5).normal(size=(6, d))
    return rng.normal(size=(n, 6)) @ basis + 0.3 * rng.normal(size=(n, d)) + offset


def test_pca_matches_sklearn_on_normalised_rows():
    rng = np.random.default_rng(0)
    X = features(rng, 120)
    red = FeatureReduction("pca", n_components=5, residual=False).fit(X)
    y = X / np.linalg.norm(X, axis=1, keepdims=True)
    reference = PCA(n_components=5, svd_solver="full").fit(y)
    np.testing.assert_allclose(red.mean_, reference.mean_, atol=1e-12)
    np.testing.assert_allclose(red.explained_variance_, reference.explained_variance_, rtol=1e-9)
    # components agree up to sign; scores likewise
    signs = np.sign(np.sum(red.components_ * reference.components_, axis=1))
    np.testing.assert_allclose(red.components_, reference.components_ * signs[:, None], atol=1e-9)
    out = red.transform(X)
    assert out.shape == (120, 6) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, :5], reference.transform(y) * signs, atol=1e-5)
    np.testing.assert_allclose(out[:, 5], np.linalg.norm(red.mean_), rtol=1e-6)  # the constant column


def test_whitening_equalises_component_variances_and_residual_is_what_is_missed():
    rng = np.random.default_rng(1)
    X = features(rng, 200)
    red = FeatureReduction("pca", n_components=4, whiten=True, residual=True).fit(X)
    out = red.transform(X).astype(np.float64)
    variances = out[:, :4].var(axis=0, ddof=1)
    np.testing.assert_allclose(variances, variances.mean(), rtol=1e-4)
    np.testing.assert_allclose(variances.mean(), red.explained_variance_.mean(), rtol=1e-4)
    y = X / np.linalg.norm(X, axis=1, keepdims=True) - red.mean_
    rest = y - (y @ red.components_.T) @ red.components_
    np.testing.assert_allclose(out[:, 4], np.linalg.norm(rest, axis=1), rtol=1e-4, atol=1e-6)


def test_whitening_a_direction_without_real_variance_stays_finite():
    # a feature (or a whole block) constant over the real training rows: its component has variance 0
    rng = np.random.default_rng(3)
    X = np.hstack([features(rng, 30)[:, :5], np.ones((30, 3))])
    red = FeatureReduction("pca", n_components=7, whiten=True, residual=False).fit(X)
    assert red.explained_variance_.min() < 1e-12
    other = X + rng.normal(0, 0.1, X.shape)
    assert np.isfinite(red.transform(other)).all()
    constant = np.hstack([features(rng, 30), np.ones((30, 4))])
    blocks = FeatureReduction("pca", n_components=3, whiten=True, per_block=True).fit(
        constant, [(0, constant.shape[1] - 4), (constant.shape[1] - 4, constant.shape[1])])
    assert np.isfinite(blocks.block_scale_).all() and np.isfinite(blocks.transform(constant + 0.01)).all()


def test_fit_uses_training_rows_only_and_transform_is_the_same_map():
    rng = np.random.default_rng(2)
    train, other = features(rng, 80), features(rng, 30) * 1.5
    red = FeatureReduction("pca", n_components=3).fit(train)
    refit = FeatureReduction("pca", n_components=3).fit(train)
    np.testing.assert_array_equal(red.transform(other), refit.transform(other))
    # row-wise: transforming rows alone or together gives the same result (no statistics of the input used)
    together = red.transform(np.vstack([train[:5], other]))
    np.testing.assert_allclose(together[5:], red.transform(other), atol=1e-7)
    # a scaled feature vector maps to the same point (rows are L2-normalised first)
    np.testing.assert_allclose(red.transform(other * 7.0), red.transform(other), atol=1e-6)


def test_save_load_is_exact_and_pickle_free(tmp_path):
    rng = np.random.default_rng(3)
    X = features(rng, 60)
    red = FeatureReduction("pca", n_components=7, whiten=True).fit(X)
    npz, meta = red.save(tmp_path / "reduction", extra={"note": "x"})
    with np.load(npz, allow_pickle=False) as arrays:
        assert sorted(arrays.files) == ["components", "explained_variance", "explained_variance_ratio", "mean"]
    assert json.loads(meta.read_text())["params"] == {"method": "pca", "n_components": 7, "whiten": True,
                                                      "residual": True, "per_block": False}
    loaded = FeatureReduction.load(tmp_path / "reduction")
    np.testing.assert_array_equal(loaded.transform(X), red.transform(X))
    assert loaded.identity() == red.identity()
    # tampered arrays are caught by the checksum
    with np.load(npz) as arrays:
        changed = {k: arrays[k] for k in arrays.files}
    changed["mean"] = changed["mean"] + 1e-3
    np.savez(npz, **changed)
    with pytest.raises(InputError, match="checksum"):
        FeatureReduction.load(tmp_path / "reduction")


def two_blocks(rng, n):
    """A 40-column block like pooled CNN features and a 15-column block with little variance of its own."""
    quiet = 10.0 + 0.02 * rng.normal(size=(n, 15)) * np.linspace(0.5, 2.0, 15)
    return np.hstack([features(rng, n), quiet])


def test_per_block_fits_each_block_alone_and_gives_every_block_the_same_variance():
    rng = np.random.default_rng(10)
    X, other = two_blocks(rng, 150), two_blocks(rng, 20)
    blocks = [(0, 40), (40, 55)]
    red = FeatureReduction("pca", n_components=20, whiten=True, residual=True, per_block=True).fit(X, blocks)
    out = red.transform(other).astype(np.float64)
    # block 0 keeps 20 components, block 1 at most its 15 columns; each has a residual; one constant column
    assert out.shape == (20, (20 + 1) + (15 + 1) + 1) and red.n_components_ == out.shape[1]
    alone = [FeatureReduction("pca", n_components=k, whiten=True, residual=True).fit(X[:, a:b])
             for k, (a, b) in zip((20, 15), blocks)]
    np.testing.assert_allclose(out[:, :21], alone[0].transform(other[:, :40])[:, :-1] * red.block_scale_[0],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[:, 21:37], alone[1].transform(other[:, 40:])[:, :-1] * red.block_scale_[1],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[:, -1], np.sqrt(sum(part.mean_ @ part.mean_ for part in alone)), rtol=1e-6)
    # the quiet block is scaled up to the same average component variance as the loud one
    fitted = red.transform(X).astype(np.float64)
    v0, v1 = fitted[:, :20].var(axis=0, ddof=1).mean(), fitted[:, 21:36].var(axis=0, ddof=1).mean()
    assert alone[1].explained_variance_.mean() < 1e-3 * alone[0].explained_variance_.mean()
    np.testing.assert_allclose(v0, v1, rtol=1e-4)
    # a change confined to one block moves that block's columns only
    changed = other.copy()
    changed[:, 40:47] += 0.1  # (not a rescaling of the whole block: each block is L2-normalised first)
    moved = red.transform(changed).astype(np.float64)
    np.testing.assert_allclose(moved[:, :21], out[:, :21], atol=1e-6)
    assert np.abs(moved[:, 21:37] - out[:, 21:37]).max() > 0.01
    # one block is the plain reduction
    one = FeatureReduction("pca", n_components=5, per_block=True).fit(X)
    np.testing.assert_allclose(one.transform(other), FeatureReduction("pca", n_components=5).fit(X).transform(other),
                               atol=1e-6)
    with pytest.raises(InputError, match="contiguous"):
        FeatureReduction("pca", n_components=2, per_block=True).fit(X, [(0, 40), (41, 55)])
    small = FeatureReduction("pca", n_components=20, per_block=True).fit(X, [(0, 40), (40, 47), (47, 55)])
    assert [len(part.components_) for part in small.parts_] == [20, 7, 8]  # min(n_components, block width)
    with pytest.raises(InputError, match="reduction.per_block"):
        FeatureReduction("pca", n_components=2, per_block="yes").fit(X)


def test_per_block_save_load_is_exact_and_pickle_free(tmp_path):
    rng = np.random.default_rng(11)
    X = two_blocks(rng, 60)
    red = FeatureReduction("pca", n_components=6, whiten=False, residual=False, per_block=True).fit(
        X, [(0, 40), (40, 55)])
    npz, meta = red.save(tmp_path / "blocks")
    with np.load(npz, allow_pickle=False) as arrays:
        assert {"blocks", "block_scale", "block0__components", "block1__mean"} <= set(arrays.files)
    assert json.loads(meta.read_text())["block_n_components"] == [6, 6]
    loaded = FeatureReduction.load(tmp_path / "blocks")
    np.testing.assert_array_equal(loaded.transform(X), red.transform(X))
    assert loaded.identity() == red.identity() and loaded.transform(X).shape == (60, 13)


def test_none_passes_features_through(tmp_path):
    X = features(np.random.default_rng(4), 10)
    red = FeatureReduction("none").fit(X)
    np.testing.assert_array_equal(red.transform(X), X.astype(np.float32))
    red.save(tmp_path / "r")
    np.testing.assert_array_equal(FeatureReduction.load(tmp_path / "r").transform(X), X.astype(np.float32))


def test_bad_parameters_and_inputs_are_clear_errors():
    X = features(np.random.default_rng(5), 10)
    with pytest.raises(InputError, match="reduction.method"):
        FeatureReduction("ica").fit(X)
    with pytest.raises(InputError, match="at most 9"):
        FeatureReduction("pca", n_components=20).fit(X)
    with pytest.raises(InputError, match="reduction.whiten"):
        FeatureReduction("pca", n_components=2, whiten="yes").fit(X)
    red = FeatureReduction("pca", n_components=2).fit(X)
    with pytest.raises(InputError, match="40 feature columns"):
        red.transform(X[:, :10])
    with pytest.raises(InputError, match="zero or not finite"):
        FeatureReduction("pca", n_components=2).fit(np.vstack([X, np.zeros((1, 40))]))
    with pytest.raises(InputError, match="not finite"):
        red.transform(np.full((2, 40), np.nan))
    # a zero row to transform (a blank generated image's statistics) stays at the origin: finite, not an error
    assert np.isfinite(red.transform(np.zeros((2, 40)))).all()
    with pytest.raises(InputError, match="not fitted"):
        FeatureReduction("pca").transform(X)


def test_reduced_space_keeps_trust_signals():
    """After PCA the trust score still tells a wrong cell type and an off-subspace defect from clean rows."""
    rng = np.random.default_rng(6)
    d, n = 60, 300
    protos = np.random.default_rng(7).normal(size=(3, d))
    def sample(n):
        cell = rng.integers(0, 3, n)
        return protos[cell] + 0.5 * rng.normal(size=(n, d)) + 4.0, cell
    (X_fit, c_fit), (X_cal, c_cal), (X_q, c_q) = sample(n), sample(n), sample(100)
    sirna = lambda m: rng.integers(0, 2, m)
    red = FeatureReduction("pca", n_components=5).fit(X_fit)
    scorer = TrustScorer().fit(red.transform(X_fit), {"cell_type": c_fit, "sirna_id": sirna(n)},
                               red.transform(X_cal), {"cell_type": c_cal, "sirna_id": sirna(n)})
    query = {"cell_type": c_q, "sirna_id": sirna(100)}
    clean = scorer.score(red.transform(X_q), query)
    wrong = scorer.score(red.transform(X_q), {**query, "cell_type": (c_q + 1) % 3})
    assert (wrong["F_cell_type"] > clean["F_cell_type"]).mean() > 0.95
    defect = X_q.copy()
    defect[:, :10] = 0.0  # a block of features gone, as when one stain is blacked out
    assert (scorer.score(red.transform(defect), query)["R"] > clean["R"].max()).mean() > 0.9


def _table(path, X, arm):
    meta = pd.DataFrame({"Metadata_site_id": [f"s{i}" for i in range(len(X))], "Metadata_arm": arm})
    write_features(meta, X.astype(np.float32), {"encoder": "test", "feature_dim": X.shape[1]}, path)


def test_cli_fits_on_seen_training_rows_and_extends_the_sidecar(tmp_path):
    rng = np.random.default_rng(8)
    X = features(rng, 50)
    arms = np.where(np.arange(50) < 40, "seen", "unseen")
    _table(tmp_path / "train.parquet", X, arms)
    cli(["fit", "--train", str(tmp_path / "train.parquet"), "--out", str(tmp_path / "red"),
         "--config", json.dumps({"method": "pca", "n_components": 4, "whiten": False, "residual": True,
                                 "per_block": False})])
    red = FeatureReduction.load(tmp_path / "red")
    assert red.n_samples_fit_ == 40
    expected = FeatureReduction("pca", n_components=4).fit(X[:40].astype(np.float32)).transform(X)
    cli(["transform", "--reduction", str(tmp_path / "red"), "--features", str(tmp_path / "train.parquet"),
         "--out", str(tmp_path / "reduced.parquet")])
    meta, reduced, info = read_features(tmp_path / "reduced.parquet")
    np.testing.assert_allclose(reduced, expected, atol=1e-6)
    assert info["feature_dim"] == 6 and info["encoder_feature_dim"] == 40
    assert info["reduction"]["sha256"] == red.identity()["sha256"]
    assert list(meta["Metadata_arm"]) == list(arms)
    with pytest.raises(InputError, match="unknown key"):
        cli(["fit", "--train", str(tmp_path / "train.parquet"), "--out", str(tmp_path / "x"),
             "--config", json.dumps({"k": 3})])
    # residual: false in the config is honoured; per_block (the default) needs the blocks listed in the sidecar
    cli(["fit", "--train", str(tmp_path / "train.parquet"), "--out", str(tmp_path / "nores"),
         "--config", json.dumps({"method": "pca", "n_components": 4, "residual": False, "per_block": False})])
    assert FeatureReduction.load(tmp_path / "nores").n_components_ == 5
    with pytest.raises(InputError, match="feature_blocks"):
        cli(["fit", "--train", str(tmp_path / "train.parquet"), "--out", str(tmp_path / "x"),
             "--config", json.dumps({"method": "pca", "n_components": 4})])


def test_cli_per_block_takes_the_blocks_from_the_sidecar(tmp_path):
    rng = np.random.default_rng(12)
    X = two_blocks(rng, 50)
    meta = pd.DataFrame({"Metadata_site_id": [f"s{i}" for i in range(50)], "Metadata_arm": "seen"})
    blocks = [{"name": "encoder", "start": 0, "stop": 40}, {"name": "statistics_w1", "start": 40, "stop": 55}]
    write_features(meta, X.astype(np.float32), {"encoder": "test", "feature_dim": 55, "feature_blocks": blocks},
                   tmp_path / "train.parquet")
    cli(["fit", "--train", str(tmp_path / "train.parquet"), "--out", str(tmp_path / "red"),
         "--config", json.dumps({"method": "pca", "n_components": 3, "per_block": True})])
    red = FeatureReduction.load(tmp_path / "red")
    assert red.blocks_.tolist() == [[0, 40], [40, 55]]
    # every block keeps n_components, the statistics block as much as the encoder's
    assert [len(part.components_) for part in red.parts_] == [3, 3]
    # the config's other keys take their defaults (whitened, no residual)
    expected = FeatureReduction("pca", n_components=3, whiten=True, residual=False, per_block=True).fit(
        X.astype(np.float32), [(0, 40), (40, 55)])
    np.testing.assert_allclose(red.transform(X), expected.transform(X), atol=1e-6)
