"""The trust score T = R + F of generated samples (arXiv 2606.09601 §3): the `TrustScorer` estimator alone.

For an L2-normalised feature y and a requested condition a* = (a_1*, ..., a_K*):

- global realism R: E(y) = (y − μ)ᵀ Σ⁻¹ (y − μ) with μ, Σ the mean and Ledoit–Wolf covariance (+ λI) of
  the real fitting features; R = (E − m_R) / s_R with m_R, s_R the mean and std (ddof=1) of E over the real
  calibration features (`realism="two_sided"`, the reference code's variant: R = ((E − m_R) / s_R)²);
- attribute-wise faithfulness F: for each attribute k, prototypes η_{k,v} (mean of the real features with
  a_k = v), a shared precision P_k from the pooled within-value covariance (1/N, Ledoit–Wolf shrinkage
  estimated on the residuals, + λI), d_k(y; v) = (y − η_{k,v})ᵀ P_k (y − η_{k,v}), the margin
  M_k(y; t) = d_k(y; t) − min_{v≠t} d_k(y; v), standardised with the mean / std of M_k over real calibration
  samples whose true a_k = t (`calibration="per_value"`, the paper; a value with fewer than
  `min_samples_per_value` such samples falls back to the attribute's pooled constants and is listed in
  `fallback_values_`) or one pooled mean / std per attribute (`calibration="per_attribute"`, the reference
  code). F = mean over k of F_k;
- T = R + F, lower is better. Threshold κ = the q-th quantile (numpy's default linear interpolation) of T over
  the real calibration samples scored with their own condition; accept when T ≤ κ.

Computation. Features are centred at μ (ỹ = y − μ, η̃ = η − μ) for conditioning. d_k(y; v) = ỹᵀPỹ − 2 (Pη̃_v)ᵀỹ
+ η̃_vᵀPη̃_v; the first term is the same for every v and cancels in the margin, so the margin needs only the
linear part b_v(y) = η̃_vᵀPη̃_v − 2 (Pη̃_v)ᵀỹ. E = ‖Aᵀỹ‖² with Σ⁻¹ = AAᵀ (Cholesky; pseudo-inverse if Σ is not
positive definite). Scoring is one GEMM per chunk of rows, [ỹ, 1] · [[A, −2PH̃ᵀ...], [0, c...]], whose columns
hold A and, for every attribute, all of its values: no loop over samples or values, no V×d×d tensor.

Precision. Fitting and calibration are float64. Scoring is float64 by default; `score_dtype="float32"` runs
the GEMM in float32. With u = 2⁻²⁴, g = (d+1)u / (1 − (d+1)u) + 2u (accumulation + rounding of both inputs),
ŷ = [ỹ, 1], ŵ_v the column of value v, z = Aᵀỹ (rank r) and ε = g ‖|A|ᵀ|ỹ|‖, the bounds per sample are
  |ΔE| ≤ 2ε‖z‖ + ε² + (r+1) u E   and   |ΔM_k| ≤ g (|ŵ_t|ᵀ|ŷ| + max_{v≠t} |ŵ_v|ᵀ|ŷ|) + u |M_k|
(to first order in u for M), so |ΔR| ≤ |ΔE| / s_R (one-sided) and |ΔF_k| ≤ |ΔM_k| / s_{k,t}. They grow with
‖A‖ and ‖Pη̃‖, i.e. like 1/λ for tiny regularisation: float32 suits well-conditioned features. The test
(tests/test_trust.py) checks measured errors against these bounds; on the 100,000 × 768 benchmark float32 changed
T by at most ~2e-5 (T has unit scale).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from scipy import linalg, sparse
from tqdm import tqdm

from .. import fitted
from ..errors import InputError

CALIBRATIONS = ("per_value", "per_attribute")
REALISMS = ("one_sided", "two_sided")
SCORE_DTYPES = ("float64", "float32")
FORMAT = "morphotrust.TrustScorer/1"


# --------------------------------------------------------------------------------------------------------
# Ledoit–Wolf and the inverse


def ledoit_wolf_shrinkage(emp_cov: np.ndarray, sum_norm4: float, n_samples: int) -> float:
    """Ledoit–Wolf shrinkage α from moments: sklearn's `ledoit_wolf_shrinkage` formula, without the data.

    `emp_cov` = XᵀX / n of the (already centred) samples, `sum_norm4` = Σ_i ‖x_i‖⁴. sklearn sums the entries
    of (X²)ᵀX², which equals Σ_i ‖x_i‖⁴, so the (n×d) data never needs to be held at once.
    """
    d = emp_cov.shape[0]
    if d == 1:
        return 0.0
    trace = float(np.trace(emp_cov))
    mu = trace / d
    delta_ = float(np.sum(emp_cov**2))
    beta = (sum_norm4 / n_samples - delta_) / (d * n_samples)
    delta = (delta_ - 2.0 * mu * trace + d * mu**2) / d
    beta = min(beta, delta)
    return 0.0 if beta == 0 else float(beta / delta)


def _shrunk(emp_cov: np.ndarray, alpha: float, regularization: float) -> np.ndarray:
    """(1 − α) S + α tr(S)/d I + λ I."""
    d = emp_cov.shape[0]
    cov = (1.0 - alpha) * emp_cov
    cov.flat[:: d + 1] += alpha * np.trace(emp_cov) / d + regularization
    return cov


def _inverse_factor(cov: np.ndarray) -> tuple[np.ndarray, str]:
    """A with cov⁻¹ = AAᵀ: A = L⁻ᵀ from Cholesky; if cov is not positive definite, the pseudo-inverse's factor."""
    try:
        lower = linalg.cholesky(cov, lower=True, check_finite=False)
        inv_lower = linalg.solve_triangular(lower, np.eye(len(cov)), lower=True, check_finite=False)
        return np.ascontiguousarray(inv_lower.T), "cholesky"
    except linalg.LinAlgError:
        values, vectors = linalg.eigh(cov, check_finite=False)
        keep = values > values.max() * len(values) * np.finfo(np.float64).eps
        return np.ascontiguousarray(vectors[:, keep] / np.sqrt(values[keep])), "pseudo_inverse"


# --------------------------------------------------------------------------------------------------------
# Input checks (raised where the data enters the scorer)


def check_features(X, what: str, n_features: int | None = None, chunk_size: int = 8192) -> np.ndarray:
    """A 2-D numeric array with finite, non-zero rows (a zero row cannot be L2-normalised)."""
    if isinstance(X, pd.DataFrame):
        X = X.to_numpy()
    X = np.asarray(X)
    if X.ndim != 2 or X.dtype.kind not in "fiu":
        raise InputError(f"features have shape {X.shape} and dtype {X.dtype}", where=what,
                         expected="a 2-D numeric array (samples × features)")
    if n_features is not None and X.shape[1] != n_features:
        raise InputError(f"features have {X.shape[1]} dimensions but the scorer was fitted on {n_features}",
                         where=what, expected=f"{n_features} feature columns from the same encoder")
    if len(X) == 0:
        raise InputError("no samples", where=what, expected="at least one row")
    bad, zero = [], []
    for start in range(0, len(X), chunk_size):
        block = X[start:start + chunk_size]
        finite = np.isfinite(block).all(axis=1)
        bad.append(start + np.flatnonzero(~finite))
        zero.append(start + np.flatnonzero(finite & ~block.any(axis=1)))
    bad, zero = np.concatenate(bad), np.concatenate(zero)
    if len(bad):
        raise InputError(f"{len(bad)} row(s) hold NaN or infinite features (first rows: "
                         f"{', '.join(map(str, bad[:10]))})", where=what, expected="finite features")
    if len(zero):
        raise InputError(f"{len(zero)} row(s) are all zero and cannot be L2-normalised (first rows: "
                         f"{', '.join(map(str, zero[:10]))})", where=what, expected="non-zero feature vectors")
    return X


def _attribute_values(attrs, attributes: tuple, n: int, what: str) -> dict:
    if not isinstance(attrs, (pd.DataFrame, Mapping)):
        raise InputError(f"attribute values given as {type(attrs).__name__}", where=what,
                         expected="a DataFrame or a dict of arrays, one per attribute")
    missing = [a for a in attributes if a not in attrs]
    if missing:
        raise InputError(f"attribute(s) {', '.join(map(repr, missing))} missing", where=what,
                         expected=f"values for every attribute: {', '.join(attributes)}")
    values = {}
    for a in attributes:
        column = attrs[a].to_numpy() if isinstance(attrs[a], pd.Series) else np.asarray(attrs[a])
        if column.ndim != 1 or len(column) != n:
            raise InputError(f"attribute '{a}' has {len(column) if column.ndim == 1 else column.shape} values "
                             f"for {n} feature rows", where=what, expected="one value per feature row")
        values[a] = column
    return values


def _python(value):
    return value.item() if isinstance(value, np.generic) else value


def _vocabulary(values: np.ndarray, attribute: str, what: str) -> list:
    missing = pd.isna(values)
    if missing.any():
        raise InputError(f"attribute '{attribute}' is missing for {int(missing.sum())} row(s) (first rows: "
                         f"{', '.join(map(str, np.flatnonzero(missing)[:10]))})", where=what,
                         expected="a value for every row")
    uniques = [_python(v) for v in pd.unique(values)]
    try:
        return sorted(uniques)
    except TypeError:  # mixed str / int values
        return sorted(uniques, key=lambda v: (type(v).__name__, str(v)))


def _encode(values: np.ndarray, vocabulary: list, attribute: str, what: str) -> np.ndarray:
    """Codes into the fitted vocabulary; a value with no real fitting sample is an error naming it."""
    codes = pd.Index(vocabulary).get_indexer(values)
    unknown = codes < 0
    if unknown.any():
        names = [_python(v) for v in pd.unique(values[unknown])]
        shown = ", ".join(repr(v) for v in names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
        known = ", ".join(repr(v) for v in vocabulary[:10]) + (", ..." if len(vocabulary) > 10 else "")
        raise InputError(
            f"attribute '{attribute}': value(s) {shown} have no real sample in the fitting data and cannot be "
            f"scored ({int(unknown.sum())} row(s), first rows: {', '.join(map(str, np.flatnonzero(unknown)[:10]))})",
            where=what, expected=f"one of the {len(vocabulary)} values seen in the fitting data ({known})")
    return codes.astype(np.intp)


def _chunks(n: int, size: int):
    return [(start, min(start + size, n)) for start in range(0, n, size)]


def _normalised(X: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Rows start:stop as float64, each divided by its L2 norm."""
    y = np.array(X[start:stop], dtype=np.float64)
    y /= np.sqrt(np.einsum("ij,ij->i", y, y))[:, None]
    return y


def _onehot(codes: np.ndarray, n_values: int) -> sparse.csr_array:
    m = len(codes)
    return sparse.csr_array((np.ones(m), (codes, np.arange(m))), shape=(n_values, m))


# --------------------------------------------------------------------------------------------------------
# The scorer


class TrustScorer:
    """Trust score T = R + F of samples given their requested attribute values (scikit-learn style).

    Parameters are stored as given; fitted attributes end in `_`. `fit` on real features and their true
    attribute values (optionally a disjoint calibration split), then `score`, `threshold`, `accept`.
    Attribute values may be str or int; they are matched by equality. The estimator does no file I/O besides
    `save` / `load` (`morphotrust.fitted`); the workflow stage is `morphotrust.trust.stage`.

    Parameters
    ----------
    attributes : tuple of str
        The attributes a condition is made of (K of them); their values are read from `attrs` by name.
    regularization : float
        λ ≥ 0 added to the diagonal of every covariance after Ledoit–Wolf shrinkage.
    calibration : {"per_value", "per_attribute"}
        Standardise the margin M_k per requested value (the paper) or once per attribute (the reference code).
    min_samples_per_value : int
        With per_value calibration, a value with fewer real calibration samples uses its attribute's pooled
        constants (listed in `fallback_values_`).
    realism : {"one_sided", "two_sided"}
        R = (E − m_R) / s_R, or its square (the reference code's variant).
    quantile : float
        q in [0, 1]: κ is the q-th quantile of T over the real calibration samples.
    score_dtype : {"float64", "float32"}
        Precision of the scoring GEMM (fitting and calibration are always float64; bounds in the module doc).
    chunk_size : int
        Rows per chunk when fitting and scoring.

    Attributes
    ----------
    attributes_ : tuple of str
        The checked `attributes`.
    values_ : dict of str to list
        Per attribute, its sorted values in the fitting data (the vocabulary; a value outside it cannot be scored).
    n_features_in_ : int
        Feature dimension d.
    n_fit_samples_ : int
        Real fitting samples n.
    calibration_source_ : {"calibration_split", "fit_pool"}
        Where R, F and κ were calibrated: the given calibration split, or the fitting pool itself.
    mean_ : ndarray of shape (d,)
        μ, the mean of the L2-normalised fitting features.
    global_shrinkage_ : float
        Ledoit–Wolf α of the global covariance.
    covariance_ : ndarray of shape (d, d)
        Σ, the shrunk and regularised global covariance.
    global_whitener_ : ndarray of shape (d, r)
        A with Σ⁻¹ = AAᵀ (r = d unless the pseudo-inverse was needed).
    inversion_ : dict of str to str
        "cholesky" or "pseudo_inverse" for the global covariance ("global") and for each attribute.
    value_counts_ : dict of str to ndarray of shape (V_k,)
        Fitting samples per value.
    prototypes_ : dict of str to ndarray of shape (V_k, d)
        η_{k,v}, the mean fitting feature of each value.
    shrinkage_ : dict of str to float
        Ledoit–Wolf α of each attribute's pooled within-value covariance.
    within_covariance_ : dict of str to ndarray of shape (d, d)
        The shrunk and regularised pooled within-value covariance of each attribute.
    precision_ : dict of str to ndarray of shape (d, d)
        P_k, the inverse of `within_covariance_`.
    scoring_matrix_ : ndarray of shape (d + 1, r + Σ_k V_k)
        [[A, −2PH̃ᵀ, ...], [0, c, ...]]: one GEMM with [ỹ, 1] gives E and every value's linear margin term.
    n_calibration_samples_ : int
        Real calibration samples.
    realism_mean_, realism_std_ : float
        m_R and s_R (ddof=1) of the energy E over the calibration samples.
    calibration_mean_, calibration_std_ : dict of str to ndarray of shape (V_k,)
        Per attribute and requested value, the mean and std of the margin M_k used to standardise F_k (the
        pooled constants where a value fell back).
    calibration_count_ : dict of str to ndarray of shape (V_k,)
        Calibration samples per value.
    pooled_calibration_ : dict of str to tuple of float
        Per attribute, the (mean, std) of M_k over all calibration samples.
    fallback_values_ : list of dict
        {attribute, value, n_calibration} of every value standardised with its attribute's pooled constants.
    calibration_scores_ : DataFrame
        R, F_<attribute>, F and T of every calibration sample.
    threshold_ : float
        κ, the `quantile` of the calibration T.
    extra_ : dict
        Set by `load` only: the `extra` given to `save` (the workflow records the encoder and input files).
    """

    def __init__(self, attributes=("cell_type", "sirna_id"), regularization=1e-5, calibration="per_value",
                 min_samples_per_value=5, realism="one_sided", quantile=0.95, score_dtype="float64",
                 chunk_size=2048):
        self.attributes = attributes
        self.regularization = regularization
        self.calibration = calibration
        self.min_samples_per_value = min_samples_per_value
        self.realism = realism
        self.quantile = quantile
        self.score_dtype = score_dtype
        self.chunk_size = chunk_size

    def get_params(self) -> dict:
        return {"attributes": list(self.attributes), "regularization": self.regularization,
                "calibration": self.calibration, "min_samples_per_value": self.min_samples_per_value,
                "realism": self.realism, "quantile": self.quantile, "score_dtype": self.score_dtype,
                "chunk_size": self.chunk_size}

    def _check_params(self) -> tuple:
        attributes = (self.attributes,) if isinstance(self.attributes, str) else tuple(self.attributes)
        if not attributes or len(set(attributes)) != len(attributes) or not all(isinstance(a, str) for a in attributes):
            raise InputError(f"attributes {attributes!r}", where="TrustScorer(attributes=...)",
                             expected="one or more distinct attribute names")
        def number(x):
            return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) and np.isfinite(x)

        checks = [
            ("regularization", number(self.regularization) and self.regularization >= 0, "a number ≥ 0"),
            ("calibration", self.calibration in CALIBRATIONS, " or ".join(CALIBRATIONS)),
            ("realism", self.realism in REALISMS, " or ".join(REALISMS)),
            ("min_samples_per_value", isinstance(self.min_samples_per_value, (int, np.integer))
             and self.min_samples_per_value >= 2, "an integer ≥ 2 (a standard deviation needs 2 samples)"),
            ("quantile", number(self.quantile) and 0 <= self.quantile <= 1, "a number in [0, 1]"),
            ("score_dtype", self.score_dtype in SCORE_DTYPES, " or ".join(SCORE_DTYPES)),
            ("chunk_size", isinstance(self.chunk_size, (int, np.integer)) and self.chunk_size >= 1,
             "an integer ≥ 1"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise InputError(f"unknown or invalid {name} {getattr(self, name)!r}",
                                 where=f"TrustScorer({name}=...)", expected=expected)
        return attributes

    # ---------------------------------------------------------------- fitting

    def fit(self, X_fit, attrs_fit, X_cal=None, attrs_cal=None, progress: bool = False) -> "TrustScorer":
        """Fit on real features `X_fit` (n × d) with true attribute values `attrs_fit` (DataFrame or dict of
        arrays, one entry per attribute); calibrate and threshold on `X_cal`/`attrs_cal`, or on the fitting
        pool when they are None (the reference code's way; recorded in `calibration_source_`)."""
        attributes = self._check_params()
        X_fit = check_features(X_fit, "fitting features")
        n, d = X_fit.shape
        values = _attribute_values(attrs_fit, attributes, n, "fitting attributes")
        vocabularies = {a: _vocabulary(values[a], a, "fitting attributes") for a in attributes}
        for a, vocabulary in vocabularies.items():
            if len(vocabulary) < 2:
                raise InputError(f"attribute '{a}' has a single value ({vocabulary[0]!r}) in the fitting data; "
                                 "its faithfulness margin needs at least one competing value",
                                 where="fitting attributes", expected="at least 2 distinct values per attribute")
        widest = max(attributes, key=lambda a: len(vocabularies[a]))
        needed = max(2, len(vocabularies[widest]) + 1)
        if n < needed:
            raise InputError(
                f"{n} real fitting sample(s) given; the covariances need at least {needed} (the pooled within-value "
                f"covariance of '{widest}' with {len(vocabularies[widest])} values needs more samples than values)",
                where="fitting features", expected=f"≥ {needed} samples")
        codes = {a: _encode(values[a], vocabularies[a], a, "fitting attributes") for a in attributes}

        if (X_cal is None) != (attrs_cal is None):
            raise InputError("calibration features and attributes must be given together", where="fit(X_cal=..., "
                             "attrs_cal=...)", expected="both or neither")
        if X_cal is None:
            X_cal, cal_codes, source = X_fit, codes, "fit_pool"
        else:
            X_cal = check_features(X_cal, "calibration features", n_features=d)
            cal_values = _attribute_values(attrs_cal, attributes, len(X_cal), "calibration attributes")
            cal_codes = {a: _encode(cal_values[a], vocabularies[a], a, "calibration attributes") for a in attributes}
            source = "calibration_split"
        if len(X_cal) < 2:
            raise InputError(f"{len(X_cal)} real calibration sample given; standardising needs at least 2",
                             where="calibration features", expected="≥ 2 samples")

        self.attributes_ = attributes
        self.values_ = vocabularies
        self.n_features_in_ = d
        self.n_fit_samples_ = n
        self.calibration_source_ = source
        self._fit_moments(X_fit, codes, progress)
        self._calibrate(X_cal, cal_codes, progress)
        return self

    def _fit_moments(self, X: np.ndarray, codes: dict, progress: bool) -> None:
        n, d = X.shape
        sizes = {a: len(self.values_[a]) for a in self.attributes_}
        chunks = _chunks(n, self.chunk_size)
        total = np.zeros(d)
        sums = {a: np.zeros((sizes[a], d)) for a in self.attributes_}
        for start, stop in tqdm(chunks, desc="trust fit: means", disable=not progress):
            y = _normalised(X, start, stop)
            total += y.sum(axis=0)
            for a in self.attributes_:
                sums[a] += _onehot(codes[a][start:stop], sizes[a]) @ y
        mean = total / n
        counts = {a: np.bincount(codes[a], minlength=sizes[a]) for a in self.attributes_}
        centred_prototypes = {a: sums[a] / counts[a][:, None] - mean for a in self.attributes_}

        # Second pass: scatter matrices of the within-value residuals, plus the Σ‖x‖⁴ terms of the Ledoit–Wolf
        # shrinkages. The global scatter is within + between for any one attribute (the residuals of each value
        # sum to zero), which saves a third (n × d × d) product.
        norm4 = 0.0
        within = {a: np.zeros((d, d)) for a in self.attributes_}
        within_norm4 = dict.fromkeys(self.attributes_, 0.0)
        for start, stop in tqdm(chunks, desc="trust fit: covariances", disable=not progress):
            centred = _normalised(X, start, stop)
            centred -= mean
            norm4 += float(np.sum(np.einsum("ij,ij->i", centred, centred) ** 2))
            for a in self.attributes_:
                residual = centred - centred_prototypes[a][codes[a][start:stop]]
                within[a] += residual.T @ residual
                within_norm4[a] += float(np.sum(np.einsum("ij,ij->i", residual, residual) ** 2))

        coarsest = min(self.attributes_, key=lambda a: sizes[a])
        between = (centred_prototypes[coarsest] * counts[coarsest][:, None]).T @ centred_prototypes[coarsest]
        scatter = within[coarsest] + (between + between.T) / 2

        reg = float(self.regularization)
        self.mean_ = mean
        self.global_shrinkage_ = ledoit_wolf_shrinkage(scatter / n, norm4, n)
        self.covariance_ = _shrunk(scatter / n, self.global_shrinkage_, reg)
        self.global_whitener_, method = _inverse_factor(self.covariance_)
        self.inversion_ = {"global": method}
        self.value_counts_, self.prototypes_, self.shrinkage_ = counts, {}, {}
        self.within_covariance_, self.precision_ = {}, {}
        columns, constants = [], []
        for a in self.attributes_:
            self.prototypes_[a] = centred_prototypes[a] + mean
            self.shrinkage_[a] = ledoit_wolf_shrinkage(within[a] / n, within_norm4[a], n)
            self.within_covariance_[a] = _shrunk(within[a] / n, self.shrinkage_[a], reg)
            factor, self.inversion_[a] = _inverse_factor(self.within_covariance_[a])
            self.precision_[a] = factor @ factor.T
            projected = self.precision_[a] @ centred_prototypes[a].T  # P η̃_vᵀ for all v: (d, V)
            columns.append(-2.0 * projected)
            constants.append(np.einsum("vd,dv->v", centred_prototypes[a], projected))  # η̃_vᵀ P η̃_v
        # One matrix for the one GEMM of scoring: [ỹ, 1] @ [[A, −2PH̃ᵀ, ...], [0, c, ...]].
        rank = self.global_whitener_.shape[1]
        self.scoring_matrix_ = np.block([[self.global_whitener_, *columns],
                                         [np.zeros((1, rank)), *(c[None, :] for c in constants)]])

    def _calibrate(self, X: np.ndarray, codes: dict, progress: bool) -> None:
        energy, margins = self._raw_scores(X, codes, np.float64, progress, "trust calibration")
        self.n_calibration_samples_ = len(X)
        self.realism_mean_ = float(energy.mean())
        self.realism_std_ = float(energy.std(ddof=1))
        if not self.realism_std_ > 0:
            raise InputError("the realism energy E is the same for every calibration sample; it cannot be "
                             "standardised", where="calibration features", expected="varied real features")
        self.calibration_mean_, self.calibration_std_, self.calibration_count_ = {}, {}, {}
        self.pooled_calibration_, self.fallback_values_ = {}, []
        for k, a in enumerate(self.attributes_):
            margin, code, size = margins[:, k], codes[a], len(self.values_[a])
            pooled = (float(margin.mean()), float(margin.std(ddof=1)))
            if not pooled[1] > 0:
                raise InputError(f"the margin of attribute '{a}' is the same for every calibration sample; it "
                                 "cannot be standardised", where="calibration features",
                                 expected="varied real features")
            count = np.bincount(code, minlength=size)
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = np.bincount(code, margin, size) / count
                std = np.sqrt(np.bincount(code, (margin - mean[code]) ** 2, size) / (count - 1))
            if self.calibration == "per_value":
                fallback = (count < self.min_samples_per_value) | ~(std > 0)
                self.fallback_values_ += [{"attribute": a, "value": self.values_[a][v],
                                           "n_calibration": int(count[v])} for v in np.flatnonzero(fallback)]
            else:
                fallback = np.ones(size, dtype=bool)
            mean[fallback], std[fallback] = pooled
            self.calibration_mean_[a], self.calibration_std_[a] = mean, std
            self.calibration_count_[a] = count
            self.pooled_calibration_[a] = pooled
        self.calibration_scores_ = self._standardise(energy, margins, codes)
        self.threshold_ = self.threshold()

    # ---------------------------------------------------------------- scoring

    def _check_fitted(self) -> None:
        if not hasattr(self, "scoring_matrix_"):
            raise InputError("this TrustScorer is not fitted", expected="fit(...) or TrustScorer.load(...) first")

    def _raw_scores(self, X: np.ndarray, codes: dict | None, dtype, progress: bool = False,
                    desc: str = "trust score") -> tuple[np.ndarray, np.ndarray]:
        """E (n,) and the raw margins M (n, K) (margins only when `codes` is given), chunk by chunk."""
        dtype = np.dtype(dtype)
        n, d = X.shape
        matrix = self.scoring_matrix_
        if dtype != matrix.dtype:
            matrix = matrix.astype(dtype)
        rank = self.global_whitener_.shape[1]
        size = min(self.chunk_size, n)
        width = matrix.shape[1] if codes is not None else rank
        matrix = matrix[:, :width]
        augmented = np.empty((size, d + 1), dtype=dtype)
        augmented[:, d] = 1.0
        product = np.empty((size, width), dtype=dtype)
        rows = np.arange(size)
        energy = np.empty(n)
        margins = np.empty((n, len(self.attributes_)))
        for start, stop in tqdm(_chunks(n, self.chunk_size), desc=desc, disable=not progress):
            m = stop - start
            y = _normalised(X, start, stop)
            y -= self.mean_
            augmented[:m, :d] = y
            z = np.matmul(augmented[:m], matrix, out=product[:m])
            energy[start:stop] = np.einsum("ij,ij->i", z[:, :rank], z[:, :rank])
            if codes is None:
                continue
            offset = rank
            for k, a in enumerate(self.attributes_):
                linear = z[:, offset:offset + len(self.values_[a])]  # b_v(y) = d_k(y; v) − ỹᵀPỹ
                target = codes[a][start:stop]
                own = linear[rows[:m], target]
                linear[rows[:m], target] = np.inf
                margins[start:stop, k] = own - linear.min(axis=1)
                offset += len(self.values_[a])
        return energy, margins

    def _standardise(self, energy: np.ndarray, margins: np.ndarray, codes: dict) -> pd.DataFrame:
        z = (energy - self.realism_mean_) / self.realism_std_
        scores = {"R": z if self.realism == "one_sided" else z**2}
        faithfulness = np.zeros(len(energy))
        for k, a in enumerate(self.attributes_):
            code = codes[a]
            scores[f"F_{a}"] = (margins[:, k] - self.calibration_mean_[a][code]) / self.calibration_std_[a][code]
            faithfulness += scores[f"F_{a}"]
        scores["F"] = faithfulness / len(self.attributes_)
        scores["T"] = scores["R"] + scores["F"]
        return pd.DataFrame(scores)

    def score(self, X, requested_attrs, progress: bool = False) -> pd.DataFrame:
        """R, F_<attribute> for each attribute, F and T per sample (rows in input order)."""
        self._check_fitted()
        X = check_features(X, "features to score", n_features=self.n_features_in_)
        values = _attribute_values(requested_attrs, self.attributes_, len(X), "requested attributes")
        codes = {a: _encode(values[a], self.values_[a], a, "requested attributes") for a in self.attributes_}
        energy, margins = self._raw_scores(X, codes, self.score_dtype, progress)
        return self._standardise(energy, margins, codes)

    def realism_energy(self, X) -> np.ndarray:
        """E(y) = (y − μ)ᵀ Σ⁻¹ (y − μ) of L2-normalised rows (a diagnostic; R standardises it)."""
        self._check_fitted()
        X = check_features(X, "features", n_features=self.n_features_in_)
        return self._raw_scores(X, None, self.score_dtype)[0]

    def value_distances(self, X, attribute: str) -> np.ndarray:
        """d_k(y; v) for every value v of `attribute` (columns in the order of `values_[attribute]`), float64."""
        self._check_fitted()
        if attribute not in self.attributes_:
            raise InputError(f"unknown attribute {attribute!r}", expected=f"one of {', '.join(self.attributes_)}")
        X = check_features(X, "features", n_features=self.n_features_in_)
        centred = _normalised(X, 0, len(X)) - self.mean_
        precision = self.precision_[attribute]
        prototypes = self.prototypes_[attribute] - self.mean_
        projected = prototypes @ precision
        quadratic = np.einsum("ij,ij->i", centred @ precision, centred)
        return (quadratic[:, None] - 2.0 * centred @ projected.T
                + np.einsum("vd,vd->v", projected, prototypes)[None, :])

    def threshold(self, q: float | None = None) -> float:
        """κ = the q-th quantile (linear interpolation) of T over the real calibration samples."""
        self._check_fitted()
        q = self.quantile if q is None else q
        if isinstance(q, bool) or not isinstance(q, (int, float, np.integer, np.floating)) or not 0 <= q <= 1:
            raise InputError(f"quantile {q!r}", expected="a number in [0, 1]")
        return float(np.quantile(self.calibration_scores_["T"].to_numpy(), q))

    def accept(self, scores_or_T) -> np.ndarray:
        """True where T ≤ κ (accept), False where the sample is abstained from (NaN T is never accepted)."""
        self._check_fitted()
        t = scores_or_T["T"] if isinstance(scores_or_T, pd.DataFrame) else scores_or_T
        return np.asarray(t, dtype=np.float64) <= self.threshold_

    # ---------------------------------------------------------------- persistence

    def save(self, path, extra: dict | None = None) -> tuple:
        """Write `<path>.npz` (arrays) and `<path>.json` (parameters, vocabularies, calibration source,
        fallback values, threshold, and `extra`, e.g. the encoder). No pickle; `load` restores it bit-exact."""
        self._check_fitted()
        arrays = {"mean": self.mean_, "covariance": self.covariance_, "global_whitener": self.global_whitener_,
                  "scoring_matrix": self.scoring_matrix_}
        for column in self.calibration_scores_.columns:
            arrays[f"calibration_scores__{column}"] = self.calibration_scores_[column].to_numpy()
        for i, a in enumerate(self.attributes_):
            for name in ("prototypes", "value_counts", "within_covariance", "precision", "calibration_mean",
                         "calibration_std", "calibration_count"):
                arrays[f"{name}__{i}"] = getattr(self, f"{name}_")[a]
        meta = {
            "format": FORMAT, "params": self.get_params(), "attributes": list(self.attributes_),
            "values": {a: self.values_[a] for a in self.attributes_},
            "n_features_in": self.n_features_in_, "n_fit_samples": self.n_fit_samples_,
            "n_calibration_samples": self.n_calibration_samples_, "calibration_source": self.calibration_source_,
            "fallback_values": self.fallback_values_, "threshold": self.threshold_,
            "realism_mean": self.realism_mean_, "realism_std": self.realism_std_,
            "global_shrinkage": self.global_shrinkage_, "shrinkage": self.shrinkage_, "inversion": self.inversion_,
            "pooled_calibration": {a: list(v) for a, v in self.pooled_calibration_.items()},
            "calibration_score_columns": list(self.calibration_scores_.columns), "extra": extra or {},
        }
        return fitted.save(arrays, meta, *fitted.paths(path))

    @classmethod
    def load(cls, path) -> "TrustScorer":
        npz_path, json_path = fitted.paths(path)
        meta, arrays = fitted.load(npz_path, json_path, FORMAT, "fitted trust scorer",
                                   "TrustScorer.save / `morphotrust trust fit`")
        params = dict(meta["params"])
        params["attributes"] = tuple(params["attributes"])
        scorer = cls(**params)
        scorer.attributes_ = tuple(meta["attributes"])
        scorer.values_ = meta["values"]
        scorer.n_features_in_ = meta["n_features_in"]
        scorer.n_fit_samples_ = meta["n_fit_samples"]
        scorer.n_calibration_samples_ = meta["n_calibration_samples"]
        scorer.calibration_source_ = meta["calibration_source"]
        scorer.fallback_values_ = meta["fallback_values"]
        scorer.threshold_ = meta["threshold"]
        scorer.realism_mean_, scorer.realism_std_ = meta["realism_mean"], meta["realism_std"]
        scorer.global_shrinkage_, scorer.shrinkage_ = meta["global_shrinkage"], meta["shrinkage"]
        scorer.inversion_ = meta["inversion"]
        scorer.pooled_calibration_ = {a: tuple(v) for a, v in meta["pooled_calibration"].items()}
        scorer.extra_ = meta["extra"]
        scorer.mean_, scorer.covariance_ = arrays["mean"], arrays["covariance"]
        scorer.global_whitener_, scorer.scoring_matrix_ = arrays["global_whitener"], arrays["scoring_matrix"]
        scorer.calibration_scores_ = pd.DataFrame(
            {c: arrays[f"calibration_scores__{c}"] for c in meta["calibration_score_columns"]})
        for name in ("prototypes", "value_counts", "within_covariance", "precision", "calibration_mean",
                     "calibration_std", "calibration_count"):
            setattr(scorer, f"{name}_", {a: arrays[f"{name}__{i}"] for i, a in enumerate(scorer.attributes_)})
        expected_width = scorer.global_whitener_.shape[1] + sum(len(v) for v in scorer.values_.values())
        if scorer.scoring_matrix_.shape != (scorer.n_features_in_ + 1, expected_width):
            raise InputError(f"scoring matrix has shape {scorer.scoring_matrix_.shape}", file=npz_path,
                             expected=f"({scorer.n_features_in_ + 1}, {expected_width}) as described in {json_path}")
        return scorer
