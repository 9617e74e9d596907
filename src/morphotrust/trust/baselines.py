"""Simpler per-sample scores beside the trust score T: is T better than what a reviewer would try first?

Every baseline sees what T sees: the same reduced features (results/reduction/), L2-normalised as T normalises
them, fitted on the same real seen-arm training sites, calibrated on the same real sites and thresholded by the
same rule, κ = the `quantile` (P95) of the real calibration scores, accept when score ≤ κ. Every score is
oriented like T: lower = more trusted.

- `LinearProbeScorer` (arXiv 2606.09601 Table 14): one multinomial logistic regression per attribute
  (scikit-learn, L2, `C`). `energy="free_energy"`, the paper's: Σ_k −logsumexp(logits_k), label-agnostic (the
  requested value is ignored); `energy="target_nll"`, the spec's: Σ_k −log p_k(requested value).
- `KNNScorer` (Table 14): Σ_k the cosine distance to the `k`-th nearest real fitting site whose a_k is the
  requested value (a value with fewer than k sites: its farthest one; listed in `short_values_`).
- `RealismScorer` (Kynkäänniemi et al. 2019): −max_j r_j / ‖y − x_j‖ over the real fitting sites x_j, with r_j
  the distance of x_j to its `k`-th (3rd) nearest real neighbour and only the balls with r_j up to the median
  kept (the paper drops the half with the largest radii); realism ≥ 1 means y lies inside a kept real ball.
- `PrecisionScorer` (Kynkäänniemi et al. 2019, per sample as in Naeem et al. 2020): −1 when y lies in some
  real k-NN ball (k = 5), else 0.
- `DensityScorer` (Naeem et al. 2020): −(1 / kM) Σ_j 1[‖y − x_j‖ ≤ r_j] over the M real sites (k = 5): how
  many real balls hold y, 1 on average for real data.
- R alone and F alone: the two terms of T, thresholded at the same quantile of their own real calibration
  values (`trust_thresholds`).

Distances for the ball scorers are Euclidean between the unit-norm features. When calibration is the fitting
pool (`X_cal=None`, trust.calibration_source fit_pool) a real site is never its own neighbour or ball: the
kNN and ball scores of calibration sites leave the site itself out.

The estimators do no I/O. The workflow stage (`morphotrust trust baselines`, which writes results/baselines/) is
`fit_scorers` and `baselines_stage` in morphotrust.trust.stage.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import logsumexp

from ..errors import InputError
from .scorer import _attribute_values, _encode, _vocabulary, check_features

# name: (label shown in tables, one line on what it is). T, R, F come from the trust stage.
SCORERS = {
    "T": ("T = R + F (trust score)", "the trust score of arXiv 2606.09601"),
    "R": ("R alone", "the realism term of T (Mahalanobis energy under the real data)"),
    "F": ("F alone", "the faithfulness term of T (margin to the requested values)"),
    "linear_probe": ("linear probe, free energy", "paper Table 14: Σ over attributes of −logsumexp of the logits"),
    "linear_probe_nll": ("linear probe, −log p(requested)", "Σ over attributes of −log p(requested value)"),
    "knn": ("kNN to the requested values", "paper Table 14: Σ over attributes of the cosine distance to the "
            "k-th nearest real site of the requested value"),
    "realism": ("realism score", "Kynkäänniemi et al. 2019: how deep inside the real k-NN balls"),
    "precision": ("precision (in a real ball)", "Kynkäänniemi et al. 2019: inside some real k-NN ball or not"),
    "density": ("density", "Naeem et al. 2020: how many real k-NN balls hold the image"),
}
TRUST_TERMS = ("T", "R", "F")
ENERGIES = ("free_energy", "target_nll")


def _unit_rows(X, what: str, n_features: int | None = None) -> np.ndarray:
    X = check_features(X, what, n_features)
    Y = np.asarray(X, dtype=np.float64)
    return Y / np.linalg.norm(Y, axis=1, keepdims=True)


def _check(name: str, ok: bool, value, expected: str, owner: str) -> None:
    if not ok:
        raise InputError(f"invalid {name} {value!r}", where=f"{owner}({name}=...)", expected=expected)


def _is_int(value, minimum: int) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= minimum


class _BaselineScorer:
    """Fit on real features, calibrate, threshold at `quantile` of the real calibration scores (like TrustScorer).

    Subclasses implement `_fit_model(Y, codes)` and `_raw(Y, codes, leave_self_out)`; `conditional` ones use the
    requested attribute values, the others ignore them."""

    conditional = False

    def _check_params(self) -> None:
        q = self.quantile
        _check("quantile", isinstance(q, (int, float, np.integer, np.floating)) and not isinstance(q, bool)
               and 0 <= q <= 1, q, "a number in [0, 1]", type(self).__name__)

    def _codes(self, attrs, n: int, what: str, fitting: bool = False) -> dict | None:
        if not self.conditional:
            return None
        attributes = (self.attributes,) if isinstance(self.attributes, str) else tuple(self.attributes)
        values = _attribute_values(attrs, attributes, n, what)
        if fitting:
            self.attributes_ = attributes
            self.values_ = {a: _vocabulary(values[a], a, what) for a in attributes}
        return {a: _encode(values[a], self.values_[a], a, what) for a in self.attributes_}

    def fit(self, X_fit, attrs_fit=None, X_cal=None, attrs_cal=None):
        """Fit on real features (and their true attribute values); calibrate on `X_cal` / `attrs_cal`, or on the
        fitting pool when they are None (each site then left out of its own neighbours)."""
        self._check_params()
        Y = _unit_rows(X_fit, "fitting features")
        codes = self._codes(attrs_fit, len(Y), "fitting attributes", fitting=True)
        self.n_features_in_ = Y.shape[1]
        self.n_fit_samples_ = len(Y)
        self._fit_model(Y, codes)
        if X_cal is None:
            calibration = self._raw(Y, codes, leave_self_out=True)
            self.calibration_source_ = "fit_pool"
        else:
            Y_cal = _unit_rows(X_cal, "calibration features", self.n_features_in_)
            calibration = self._raw(Y_cal, self._codes(attrs_cal, len(Y_cal), "calibration attributes"), False)
            self.calibration_source_ = "calibration_split"
        self.calibration_scores_ = calibration
        self.threshold_ = float(np.nanquantile(calibration, self.quantile))
        return self

    def score(self, X, requested_attrs=None) -> np.ndarray:
        """The score of each row (lower = more trusted), for its requested attribute values."""
        if not hasattr(self, "threshold_"):
            raise InputError(f"this {type(self).__name__} is not fitted", expected="fit(...) first")
        Y = _unit_rows(X, "features to score", self.n_features_in_)
        return self._raw(Y, self._codes(requested_attrs, len(Y), "requested attributes"), False)

    def accept(self, scores) -> np.ndarray:
        return np.asarray(scores, dtype=np.float64) <= self.threshold_


class LinearProbeScorer(_BaselineScorer):
    """Per-attribute multinomial logistic regression on the unit-norm features; see the module docstring."""

    conditional = True

    def __init__(self, attributes=("cell_type", "sirna_id"), energy="free_energy", C=1.0, max_iter=1000,
                 quantile=0.95):
        self.attributes = attributes
        self.energy = energy
        self.C = C
        self.max_iter = max_iter
        self.quantile = quantile

    def _check_params(self) -> None:
        super()._check_params()
        owner = type(self).__name__
        _check("energy", self.energy in ENERGIES, self.energy, " or ".join(ENERGIES), owner)
        _check("C", isinstance(self.C, (int, float)) and self.C > 0, self.C, "a number > 0", owner)
        _check("max_iter", _is_int(self.max_iter, 1), self.max_iter, "an integer ≥ 1", owner)

    def _fit_model(self, Y, codes) -> None:
        from sklearn.linear_model import LogisticRegression

        self.probes_ = {}
        for a in self.attributes_:
            if len(self.values_[a]) < 2:
                raise InputError(f"attribute '{a}' has a single value in the fitting data", where="fitting attributes",
                                 expected="at least 2 values per attribute for a probe")
            self.probes_[a] = LogisticRegression(C=self.C, max_iter=self.max_iter).fit(Y, codes[a])

    def logits(self, Y: np.ndarray, attribute: str) -> np.ndarray:
        """(n, V) logits of one attribute's probe (a two-value probe: [0, z])."""
        z = self.probes_[attribute].decision_function(Y)
        return np.column_stack([np.zeros(len(z)), z]) if z.ndim == 1 else z

    def _raw(self, Y, codes, leave_self_out) -> np.ndarray:
        total = np.zeros(len(Y))
        for a in self.attributes_:
            logits = self.logits(Y, a)
            free = logsumexp(logits, axis=1)
            total += -free if self.energy == "free_energy" else free - logits[np.arange(len(Y)), codes[a]]
        return total


class KNNScorer(_BaselineScorer):
    """Σ over attributes of the cosine distance to the k-th nearest real site of the requested value."""

    conditional = True

    def __init__(self, attributes=("cell_type", "sirna_id"), k=5, quantile=0.95):
        self.attributes = attributes
        self.k = k
        self.quantile = quantile

    def _check_params(self) -> None:
        super()._check_params()
        _check("k", _is_int(self.k, 1), self.k, "an integer ≥ 1", type(self).__name__)

    def _fit_model(self, Y, codes) -> None:
        from sklearn.neighbors import NearestNeighbors

        self.neighbours_, self.short_values_ = {}, []
        for a in self.attributes_:
            self.neighbours_[a] = []
            for v, value in enumerate(self.values_[a]):
                members = Y[codes[a] == v]
                if len(members) < self.k:
                    self.short_values_.append({"attribute": a, "value": value, "n_fit": int(len(members))})
                self.neighbours_[a].append(NearestNeighbors(metric="cosine", algorithm="brute").fit(members))

    def _raw(self, Y, codes, leave_self_out) -> np.ndarray:
        total = np.zeros(len(Y))
        for a in self.attributes_:
            for v in np.unique(codes[a]):
                rows = codes[a] == v
                index = self.neighbours_[a][v]
                # leave_self_out: Y is the fitting pool and value v's rows are exactly the members of `index`,
                # whose kneighbors() without a query leaves each member out of its own neighbours
                available = index.n_samples_fit_ - (1 if leave_self_out else 0)
                if available < 1:
                    total[rows] = np.nan
                    continue
                k = min(self.k, available)
                distances, _ = index.kneighbors(None if leave_self_out else Y[rows], n_neighbors=k)
                total[rows] += distances[:, -1]
        return total


class _RealBalls(_BaselineScorer):
    """The real fitting sites and the radius of each one's k-NN ball (to its k-th nearest other real site)."""

    def __init__(self, k=5, quantile=0.95, chunk_size=2048):
        self.k = k
        self.quantile = quantile
        self.chunk_size = chunk_size

    def _check_params(self) -> None:
        super()._check_params()
        _check("k", _is_int(self.k, 1), self.k, "an integer ≥ 1", type(self).__name__)

    def _fit_model(self, Y, codes) -> None:
        from sklearn.neighbors import NearestNeighbors

        if len(Y) <= self.k:
            raise InputError(f"{len(Y)} real fitting sites", where="fitting features",
                             expected=f"more than k = {self.k} for the k-NN balls")
        self.real_ = Y
        distances, _ = NearestNeighbors(n_neighbors=self.k).fit(Y).kneighbors()
        self.radii_ = distances[:, -1]

    def _raw(self, Y, codes, leave_self_out) -> np.ndarray:
        out = np.empty(len(Y))
        # a ball holds the points at most its radius away (Kynkäänniemi et al.: ≤); the relative slack keeps a
        # real site that is its neighbour's k-th nearest on the boundary inside, whatever the rounding
        squared_radii = self.radii_ ** 2 * (1.0 + 1e-9)
        for start in range(0, len(Y), self.chunk_size):
            block = Y[start:start + self.chunk_size]
            d2 = np.maximum(2.0 - 2.0 * block @ self.real_.T, 0.0)  # unit rows: ‖y − x‖² = 2 − 2 y·x
            if leave_self_out:  # Y is the fitting pool, row i is real site i: not its own ball
                d2[np.arange(len(block)), np.arange(start, start + len(block))] = np.inf
            out[start:start + len(block)] = self._from_distances(d2, squared_radii)
        return out


class RealismScorer(_RealBalls):
    """−realism (Kynkäänniemi et al. 2019): −max_j r_j / ‖y − x_j‖ over the real balls with r_j ≤ the median."""

    def __init__(self, k=3, quantile=0.95, chunk_size=2048):
        super().__init__(k, quantile, chunk_size)

    def _fit_model(self, Y, codes) -> None:
        super()._fit_model(Y, codes)
        self.kept_balls_ = self.radii_ <= np.median(self.radii_)

    def _from_distances(self, d2, squared_radii) -> np.ndarray:
        ratio = np.sqrt(squared_radii[self.kept_balls_] / np.maximum(d2[:, self.kept_balls_], 1e-24))
        return -ratio.max(axis=1)


class PrecisionScorer(_RealBalls):
    """−1 inside some real k-NN ball, 0 outside (Kynkäänniemi et al. 2019; per sample as in Naeem et al. 2020)."""

    def _from_distances(self, d2, squared_radii) -> np.ndarray:
        return -(d2 <= squared_radii).any(axis=1).astype(float)


class DensityScorer(_RealBalls):
    """−density (Naeem et al. 2020): −(1 / kM) × the number of the M real k-NN balls holding y."""

    def _from_distances(self, d2, squared_radii) -> np.ndarray:
        return -(d2 <= squared_radii).sum(axis=1) / (self.k * len(squared_radii))


# --------------------------------------------------------------------------------------------------------
# The baselines of config section `baselines`, fitted and thresholded like T

CONFIG_KEYS = ("knn_k", "realism_k", "density_k", "probe_C")


def make_baselines(cfg: dict, attributes: tuple, quantile: float) -> dict:
    """The unfitted baseline estimators of config section `baselines`, by name (see SCORERS)."""
    missing = [k for k in CONFIG_KEYS if k not in cfg]
    if missing:
        raise InputError(f"key(s) {', '.join(missing)} missing", where="config baselines",
                         expected="the section as filled in by the workflow's schema")
    return {
        "linear_probe": LinearProbeScorer(attributes, "free_energy", cfg["probe_C"], quantile=quantile),
        "linear_probe_nll": LinearProbeScorer(attributes, "target_nll", cfg["probe_C"], quantile=quantile),
        "knn": KNNScorer(attributes, cfg["knn_k"], quantile),
        "realism": RealismScorer(cfg["realism_k"], quantile),
        "precision": PrecisionScorer(cfg["density_k"], quantile),
        "density": DensityScorer(cfg["density_k"], quantile),
    }


def trust_thresholds(scorer) -> dict:
    """κ of T, R and F alone: the scorer's quantile of each one's real calibration values (T: scorer.threshold_)."""
    values = scorer.calibration_scores_
    return {term: float(np.quantile(values[term].to_numpy(), scorer.quantile)) for term in TRUST_TERMS}


def score_all(baselines: dict, X, attrs) -> pd.DataFrame:
    """One column per baseline: its score of every row."""
    return pd.DataFrame({name: estimator.score(X, attrs) for name, estimator in baselines.items()})


def thresholds_of(scorer, baselines: dict) -> dict:
    return {**trust_thresholds(scorer), **{name: b.threshold_ for name, b in baselines.items()}}
