"""The reduction stage's files: `morphotrust reduction fit` (the seen-arm rows of the real training features ->
results/reduction/reduction.npz/.json) and `morphotrust reduction transform` (a feature table -> the same table
in the reduced space, its sidecar extended with the reduction's identity). The estimator is
morphotrust.reduction.estimator; the command line morphotrust.reduction.cli.
"""

from __future__ import annotations

from ..config import check_section
from ..errors import InputError
from .estimator import FeatureReduction


def block_ranges(feature_blocks: list[dict]) -> list[tuple]:
    """The `blocks` argument of `FeatureReduction.fit` for a sidecar's `feature_blocks`."""
    return [(b["start"], b["stop"]) for b in feature_blocks]


def reduction_config(text: str) -> dict:
    """The `reduction` config section (JSON), checked, with the schema's defaults filled in; unknown keys are an
    error."""
    return check_section("reduction", text)


def fit_stage(train, cfg: dict, out) -> FeatureReduction:
    """Fit on the seen-arm rows of the real training features (the trust score's fitting pool)."""
    from ..features import read_features, sidecar_path

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
    from ..features import read_features, write_features

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
