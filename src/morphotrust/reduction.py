"""Feature reduction between the encoder features and the trust score (config `reduction`).

Real RxRx1 conditions have tens of sites while encoders give hundreds to thousands of dimensions (per-stain
features: 6 × 1280 for the default). `FeatureReduction` fits a PCA on the real *training* features of the seen
arm only (the trust score's fitting pool) and applies the same fitted map to every real split and to the
generated features, so both sides of the trust score live in one space.

Method (`method: pca`, scikit-learn conventions: `fit` then `transform`, fitted attributes end in `_`):

1. every row is L2-normalised (as the trust score does with any feature, spec "Φ");
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

Fitted state is saved without pickle: `<path>.npz` (arrays) + `<path>.json` (parameters, shapes, sha256 of the
arrays) and `load` restores it bit-exact. The stage: `morphotrust reduction fit` (real training features ->
results/reduction/reduction.npz/.json) and `morphotrust reduction transform` (any feature table -> the same
table in the reduced space, sidecar extended with the reduction's identity).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

from .errors import InputError
from .io import read_json, write_json, write_npz

METHODS = ("none", "pca")
FORMAT = "morphotrust.FeatureReduction/1"
DEFAULT_CONFIG = {"method": "pca", "n_components": 8, "whiten": True, "residual": False, "per_block": True}


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
    """PCA of L2-normalised features (optionally whitened) plus a constant column; see the module doc."""

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

    @staticmethod
    def _paths(path) -> tuple[Path, Path]:
        path = Path(path)
        if path.suffix in (".npz", ".json"):
            path = path.with_suffix("")
        return Path(f"{path}.npz"), Path(f"{path}.json")

    def save(self, path, extra: dict | None = None) -> tuple[Path, Path]:
        self._check_fitted()
        npz_path, json_path = self._paths(path)
        write_npz(self._arrays(), npz_path)
        meta = {"format": FORMAT, "params": self.get_params(), "n_features_in": self.n_features_in_,
                "n_samples_fit": self.n_samples_fit_, "n_components_out": self.n_components_,
                "identity": self.identity(), "extra": extra or {}}
        if self.method == "pca" and not self.per_block:
            meta["explained_variance_ratio_total"] = float(self.explained_variance_ratio_.sum())
        if self.method == "pca" and self.per_block:
            meta["block_n_components"] = [int(len(part.components_)) for part in self.parts_]
            meta["block_explained_variance_ratio_total"] = [float(part.explained_variance_ratio_.sum())
                                                            for part in self.parts_]
        write_json(meta, json_path)
        return npz_path, json_path

    @classmethod
    def load(cls, path) -> "FeatureReduction":
        npz_path, json_path = cls._paths(path)
        for p in (npz_path, json_path):
            if not p.is_file():
                raise InputError("fitted feature reduction file is missing", file=p,
                                 expected="the .npz and .json written by `morphotrust reduction fit`")
        meta = read_json(json_path)
        if meta.get("format") != FORMAT:
            raise InputError(f"format {meta.get('format')!r}", file=json_path, expected=FORMAT)
        reduction = cls(**meta["params"])
        reduction.n_features_in_ = meta["n_features_in"]
        reduction.n_samples_fit_ = meta["n_samples_fit"]
        reduction.n_components_ = meta["n_components_out"]
        with np.load(npz_path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
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


# --------------------------------------------------------------------------------------------------------
# Workflow stage: `morphotrust reduction fit|transform`


def block_ranges(feature_blocks: list[dict]) -> list[tuple]:
    """The `blocks` argument of `FeatureReduction.fit` for a sidecar's `feature_blocks`."""
    return [(b["start"], b["stop"]) for b in feature_blocks]



def reduction_config(text: str) -> dict:
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"not JSON: {error}", where="--config", expected="the reduction config section") from None
    unknown = sorted(set(cfg) - set(DEFAULT_CONFIG))
    if unknown:
        raise InputError(f"unknown key(s) {', '.join(unknown)}", where="config reduction",
                         expected=f"keys among {', '.join(DEFAULT_CONFIG)}")
    return {**DEFAULT_CONFIG, **cfg}


def fit_stage(train, cfg: dict, out) -> FeatureReduction:
    """Fit on the seen-arm rows of the real training features (the trust score's fitting pool)."""
    from .features import read_features, sidecar_path

    reduction = FeatureReduction(cfg["method"], cfg["n_components"], cfg["whiten"], cfg["residual"], cfg["per_block"])
    reduction._check_params()
    meta, X, info = read_features(train)
    blocks = None
    if reduction.method == "pca" and reduction.per_block:
        if not info.get("feature_blocks"):
            raise InputError("the sidecar lists no feature_blocks", file=sidecar_path(train),
                             where="reduction.per_block", expected="a feature table written by this version of "
                             "`morphotrust features` (rerun the features stage)")
        blocks = block_ranges(info["feature_blocks"])
    if "Metadata_arm" not in meta.columns:
        raise InputError("column Metadata_arm missing", file=train, expected="a real feature table")
    seen = (meta["Metadata_arm"] == "seen").to_numpy()
    if not seen.any():
        raise InputError("no rows with Metadata_arm == 'seen'", file=train, expected="real seen-arm features")
    try:
        reduction.fit(X[seen], blocks)
    except InputError as error:
        raise InputError(error.problem, file=train, where=error.where, expected=error.expected) from None
    reduction.save(out, extra={"train": str(train), "encoder": info.get("encoder"),
                               "weights_sha256": info.get("weights_sha256"), "channels": info.get("channels")})
    kept = ""
    if reduction.method == "pca" and reduction.per_block:
        kept = f", {len(reduction.parts_)} blocks fitted separately"
    elif reduction.method == "pca":
        kept = f", {reduction.explained_variance_ratio_.sum():.1%} of the variance kept"
    print(f"reduction {reduction.method}: {reduction.n_features_in_} -> {reduction.n_components_} features, "
          f"fitted on {int(seen.sum())} real seen-arm training rows{kept}", flush=True)
    return reduction


def transform_stage(reduction_path, features, out) -> None:
    from .features import read_features, write_features

    reduction = FeatureReduction.load(reduction_path)
    meta, X, info = read_features(features)
    try:
        reduced = reduction.transform(X)
    except InputError as error:
        raise InputError(error.problem, file=features, where=error.where, expected=error.expected) from None
    identity = reduction.identity()
    info = {**info, "encoder_feature_dim": info.get("feature_dim"), "feature_dim": int(reduced.shape[1]),
            "reduction": identity}
    write_features(meta, reduced, info, out)
    print(f"{len(reduced)} rows: {X.shape[1]} -> {reduced.shape[1]} features ({identity['method']}): {out}")


def cli(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="morphotrust reduction")
    commands = parser.add_subparsers(dest="command", required=True)
    fit = commands.add_parser("fit", help="fit the reduction on the real seen-arm training features")
    fit.add_argument("--train", required=True, help="results/features/real_train.parquet")
    fit.add_argument("--config", default="{}", help="the `reduction` config section as JSON")
    fit.add_argument("--out", required=True, help="results/reduction/reduction (.npz/.json prefix)")
    transform = commands.add_parser("transform", help="apply the fitted reduction to a feature table")
    transform.add_argument("--reduction", required=True, help="results/reduction/reduction (.npz/.json prefix)")
    transform.add_argument("--features", required=True, help="a feature table (.parquet with .json sidecar)")
    transform.add_argument("--out", required=True, help="the reduced table (.parquet); a .json sidecar beside it")
    args = parser.parse_args(argv)
    if args.command == "fit":
        fit_stage(args.train, reduction_config(args.config), args.out)
    else:
        transform_stage(args.reduction, args.features, args.out)
