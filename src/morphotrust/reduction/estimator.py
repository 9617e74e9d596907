"""Feature reduction between the encoder features and the trust score (config `reduction`).

Real RxRx1 conditions have tens of sites while encoders give hundreds to thousands of dimensions (per-stain
features: 6 × 1280 for the default). `FeatureReduction` fits a PCA on the real *training* features of the seen
arm only (the trust score's fitting pool) and applies the same fitted map to every real split and to the
generated features, so both sides of the trust score live in one space.

Method (`method: pca`, scikit-learn conventions: `fit` then `transform`, fitted attributes end in `_`):

1. every row is L2-normalised (as the trust score does with any feature: Φ in arXiv 2606.09601 §3);
2. mean_ = mean of the normalised training rows; components_ = the top `n_components` right singular
   vectors of the centred training rows (k × d), explained_variance_ their variances (ddof=1);
3. transform: z = (y − mean_) · components_ᵀ, divided by sqrt(explained_variance_ / mean(explained_variance_))
   when `whiten` (unit-free: every component then has the average variance, so the total scale is kept);
4. with `residual` (default), one column holding the length of what the k components miss,
   ‖(y − mean_) − z · components_‖: a defect that moves features off the kept subspace (a stain blacked out,
   say) would otherwise vanish from both R and F; the trust score then sees it in that column;
5. one constant column equal to ‖mean_‖ is appended: the output is (z, [residual,] ‖mean_‖). Why: the trust score
   L2-normalises its input again. Normalising the centred scores z alone would throw away their length, i.e.
   how far a sample is from the real mean, which is what the realism score R measures. With the constant
   column the normalisation is invertible (z = ‖mean_‖ · o[:k] / o[k]) and, since ‖z‖ is small next to
   ‖mean_‖ for real features, nearly the identity on real data.

`method: none` passes the features through unchanged (same table, same columns).

With `per_block` (pca only) the map above is fitted separately on each block of columns named in the feature
sidecar (`feature_blocks`: one per stain for `per_stain` encoder features, one for a composite encoder, one per
stain for the image statistics of `features.statistics`, see morphotrust.features). Every block keeps
min(n_components, block width) components (the default, 8, keeps 8 of a stain's 14 statistics: the directions
of least real variance, which whitening would inflate most, go; measured in BENCHMARKS.md). Each block's z (and
residual) is then multiplied by sqrt(v̄ / v̄_b), v̄_b the block's average kept component
variance and v̄ the mean of the v̄_b: every block enters the trust score with the same average variance, so a
stain (or the statistics) with little variance of its own is not drowned by the others, nor by the trust
score's Ledoit–Wolf shrinkage towards a multiple of the identity. The blocks' z (and residuals) are concatenated,
then one constant column sqrt(Σ_b ‖mean_b‖²). One block is the plain map.

Fitted state is saved without pickle (morphotrust.fitted): `<path>.npz` (arrays) + `<path>.json` (parameters,
shapes, sha256 of the arrays) and `load` restores it bit-exact. The stage (morphotrust.reduction.stage):
`morphotrust reduction fit` (real training features -> results/reduction/reduction.npz/.json) and `morphotrust
reduction transform` (any feature table -> the same table in the reduced space, sidecar extended with the
reduction's identity).
"""

from __future__ import annotations

import hashlib

import numpy as np

from .. import fitted
from ..errors import InputError

METHODS = ("none", "pca")
FORMAT = "morphotrust.FeatureReduction/1"


def _relative_sd(variance: np.ndarray) -> np.ndarray:
    """sqrt(variance / mean variance), the whitening (and block) scale; a direction without real variance (a
    feature constant over the real training rows) counts as one with a millionth of the average, and when no
    direction has any variance nothing is scaled."""
    average = variance.mean()
    if not average > 0:
        return np.ones_like(variance)
    return np.sqrt(np.maximum(variance, 1e-6 * average) / average)


def _normalised(X: np.ndarray, zero_rows_allowed: bool = False) -> np.ndarray:
    """Rows scaled to unit L2 norm. A zero row has no direction: fitting refuses it; a transformed one (a blank
    generated image's per-stain statistics) stays at the origin, away from every unit-norm real row, so it is
    scored, and rejected, like any other image. Non-finite rows are always an error."""
    y = np.asarray(X, dtype=np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", y, y))
    bad = ~np.isfinite(norms) if zero_rows_allowed else ~(norms > 0) | ~np.isfinite(norms)
    if bad.any():
        rows = np.flatnonzero(bad)
        what = "not finite" if zero_rows_allowed else "zero or not finite"
        raise InputError(f"{len(rows)} row(s) are {what} (first rows: {', '.join(map(str, rows[:10]))})",
                         where="features to reduce", expected="finite, non-zero feature vectors")
    return y / np.where(norms > 0, norms, 1.0)[:, None]


class FeatureReduction:
    """PCA of L2-normalised features (optionally whitened) plus a constant column; see the module doc.

    Parameters
    ----------
    method : {"pca", "none"}
        "none" passes the features through.
    n_components : int
        Components kept (per block with `per_block`: min(n_components, block width)).
    whiten : bool
        Scale every component to the average variance.
    residual : bool
        Append the length of what the kept components miss.
    per_block : bool
        Fit the map separately on each block of columns given to `fit`, blocks weighted equally.

    Attributes
    ----------
    n_features_in_ : int
        Input feature columns.
    n_samples_fit_ : int
        Training rows.
    n_components_ : int
        Output columns (components [+ residual] + the constant column; the input width for "none").
    mean_, components_, explained_variance_, explained_variance_ratio_ : ndarray
        pca without per_block: mean of the normalised rows (d,), kept right singular vectors (k, d), their
        variances (ddof=1) and shares of the total variance (k,).
    blocks_ : ndarray of shape (n_blocks, 2)
        per_block: the (start, stop) column range of each block.
    parts_ : list of FeatureReduction
        per_block: the fitted map of each block.
    block_scale_ : ndarray of shape (n_blocks,)
        per_block: the factor sqrt(v̄ / v̄_b) applied to each block's output.
    """

    def __init__(self, method: str = "pca", n_components: int = 64, whiten: bool = False, residual: bool = True,
                 per_block: bool = False):
        self.method = method
        self.n_components = n_components
        self.whiten = whiten
        self.residual = residual
        self.per_block = per_block

    def get_params(self) -> dict:
        return {"method": self.method, "n_components": self.n_components, "whiten": self.whiten,
                "residual": self.residual, "per_block": self.per_block}

    def _check_params(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"unknown reduction method {self.method!r}", where="reduction.method",
                             expected=" or ".join(METHODS))
        if self.method == "pca" and (isinstance(self.n_components, bool)
                                     or not isinstance(self.n_components, (int, np.integer))
                                     or self.n_components < 1):
            raise InputError(f"n_components {self.n_components!r}", where="reduction.n_components",
                             expected="an integer ≥ 1")
        for name in ("whiten", "residual", "per_block"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise InputError(f"{name} {getattr(self, name)!r}", where=f"reduction.{name}",
                                 expected="true or false")

    def fit(self, X, blocks=None) -> "FeatureReduction":
        """Fit on real training features. With per_block, `blocks` lists the column ranges (start, stop), covering
        all columns in order (`block_ranges`); each keeps min(n_components, width) components. One block when
        None."""
        self._check_params()
        X = np.asarray(X)
        if X.ndim != 2 or len(X) == 0:
            raise InputError(f"features have shape {X.shape}", where="features to fit the reduction on",
                             expected="a 2-D array with at least one row")
        n, d = X.shape
        self.n_features_in_ = d
        self.n_samples_fit_ = n
        if self.method == "none":
            self.n_components_ = d
            return self
        if self.per_block:
            return self._fit_blocks(X, blocks)
        if self.n_components > min(n - 1, d):
            raise InputError(f"n_components {self.n_components} but only {n} training rows of {d} features",
                             where="reduction.n_components",
                             expected=f"at most {min(n - 1, d)} (training rows − 1, and the feature count)")
        y = _normalised(X)
        self.mean_ = y.mean(axis=0)
        _, singular, vt = np.linalg.svd(y - self.mean_, full_matrices=False)
        # sign convention (as sklearn's svd_flip): the largest |loading| of each component is positive
        signs = np.sign(vt[np.arange(len(vt)), np.argmax(np.abs(vt), axis=1)])
        vt *= np.where(signs == 0, 1.0, signs)[:, None]
        variance = singular**2 / max(n - 1, 1)
        k = int(self.n_components)
        self.components_ = np.ascontiguousarray(vt[:k])
        self.explained_variance_ = variance[:k]
        self.explained_variance_ratio_ = variance[:k] / variance.sum() if variance.sum() > 0 else 0 * variance[:k]
        self.n_components_ = k + 1 + int(bool(self.residual))  # + the constant (and residual) column
        return self

    def _fit_blocks(self, X, blocks) -> "FeatureReduction":
        blocks = [(0, X.shape[1])] if blocks is None else [(int(a), int(b)) for a, b in blocks]
        starts, stops = [block[0] for block in blocks], [block[1] for block in blocks]
        if (not blocks or starts[0] != 0 or stops[-1] != X.shape[1] or starts[1:] != stops[:-1]
                or any(a >= b for a, b in zip(starts, stops))):
            raise InputError(f"feature blocks {blocks}", where="reduction.per_block",
                             expected=f"contiguous, non-empty column ranges covering columns 0..{X.shape[1]}")
        kept = [min(int(self.n_components), b - a) for a, b in blocks]
        self.blocks_ = np.array([starts, stops], dtype=np.int64).T
        self.parts_ = [FeatureReduction("pca", k, self.whiten, self.residual).fit(X[:, a:b])
                       for k, a, b in zip(kept, starts, stops)]
        average = np.array([part.explained_variance_.mean() for part in self.parts_])
        self.block_scale_ = 1.0 / _relative_sd(average)
        self.n_components_ = sum(part.n_components_ - 1 for part in self.parts_) + 1
        return self

    def _transform_blocks(self, X) -> np.ndarray:
        columns = []
        for (a, b), part, scale in zip(self.blocks_, self.parts_, self.block_scale_):
            columns.append(part.transform(X[:, a:b])[:, :-1].astype(np.float64) * scale)  # without its constant
        constant = np.sqrt(sum(float(part.mean_ @ part.mean_) for part in self.parts_))
        columns.append(np.full((len(X), 1), constant))
        return np.hstack(columns).astype(np.float32)

    def _check_fitted(self) -> None:
        if not hasattr(self, "n_features_in_"):
            raise InputError("this FeatureReduction is not fitted", expected="fit(...) or load(...) first")

    def transform(self, X) -> np.ndarray:
        """The reduced features, float32: (n, n_components + 1 [+ 1 with residual]) for pca, X itself for none."""
        self._check_fitted()
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise InputError(f"features have shape {X.shape}", where="features to reduce",
                             expected=f"{self.n_features_in_} feature columns, as in the fitting features")
        if self.method == "none":
            return X.astype(np.float32, copy=False)
        if self.per_block:
            return self._transform_blocks(X)
        centred = _normalised(X, zero_rows_allowed=True) - self.mean_
        z = centred @ self.components_.T
        columns = [z]
        if self.residual:  # what the kept components miss: ‖ỹ‖² − ‖z‖² (components are orthonormal)
            rest = np.einsum("ij,ij->i", centred, centred) - np.einsum("ij,ij->i", z, z)
            columns.append(np.sqrt(np.clip(rest, 0.0, None))[:, None])
        if self.whiten:
            z /= _relative_sd(self.explained_variance_)
        columns.append(np.full((len(z), 1), np.linalg.norm(self.mean_)))
        return np.hstack(columns).astype(np.float32)

    def fit_transform(self, X) -> np.ndarray:
        return self.fit(X).transform(X)

    # ---------------------------------------------------------------- persistence

    def _arrays(self) -> dict:
        if self.method == "none":
            return {}
        if self.per_block:
            arrays = {"blocks": self.blocks_, "block_scale": self.block_scale_}
            for i, part in enumerate(self.parts_):
                arrays.update({f"block{i}__{key}": value for key, value in part._arrays().items()})
            return arrays
        return {"mean": self.mean_, "components": self.components_,
                "explained_variance": self.explained_variance_,
                "explained_variance_ratio": self.explained_variance_ratio_}

    def identity(self) -> dict:
        """What a reduced feature table records about the reduction (compared by the trust score)."""
        self._check_fitted()
        digest = hashlib.sha256()
        for key, value in sorted(self._arrays().items()):
            digest.update(key.encode())
            digest.update(np.ascontiguousarray(value).tobytes())
        return {**self.get_params(), "n_features_in": self.n_features_in_, "n_components_out": self.n_components_,
                "sha256": digest.hexdigest()}

    def save(self, path, extra: dict | None = None) -> tuple:
        self._check_fitted()
        meta = {"format": FORMAT, "params": self.get_params(), "n_features_in": self.n_features_in_,
                "n_samples_fit": self.n_samples_fit_, "n_components_out": self.n_components_,
                "identity": self.identity(), "extra": extra or {}}
        if self.method == "pca" and not self.per_block:
            meta["explained_variance_ratio_total"] = float(self.explained_variance_ratio_.sum())
        if self.method == "pca" and self.per_block:
            meta["block_n_components"] = [int(len(part.components_)) for part in self.parts_]
            meta["block_explained_variance_ratio_total"] = [float(part.explained_variance_ratio_.sum())
                                                            for part in self.parts_]
        return fitted.save(self._arrays(), meta, *fitted.paths(path))

    @classmethod
    def load(cls, path) -> "FeatureReduction":
        npz_path, json_path = fitted.paths(path)
        meta, arrays = fitted.load(npz_path, json_path, FORMAT, "fitted feature reduction",
                                   "`morphotrust reduction fit`")
        reduction = cls(**meta["params"])
        reduction.n_features_in_ = meta["n_features_in"]
        reduction.n_samples_fit_ = meta["n_samples_fit"]
        reduction.n_components_ = meta["n_components_out"]
        if reduction.method == "pca" and reduction.per_block:
            reduction.parts_ = []
            for i, (a, b) in enumerate(arrays["blocks"]):
                part = cls("pca", len(arrays[f"block{i}__components"]), reduction.whiten, reduction.residual)
                part.n_features_in_, part.n_samples_fit_ = int(b - a), reduction.n_samples_fit_
                part.n_components_ = len(arrays[f"block{i}__components"]) + 1 + int(bool(reduction.residual))
                for key in ("mean", "components", "explained_variance", "explained_variance_ratio"):
                    setattr(part, f"{key}_", arrays.pop(f"block{i}__{key}"))
                reduction.parts_.append(part)
        for key, value in arrays.items():
            setattr(reduction, f"{key}_", value)
        if reduction.identity()["sha256"] != meta["identity"]["sha256"]:
            raise InputError("arrays do not match the checksum in the JSON", file=npz_path,
                             expected=f"the arrays saved together with {json_path}")
        return reduction
