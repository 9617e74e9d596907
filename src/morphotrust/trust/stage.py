"""The trust stage's files: `morphotrust trust fit|adequacy|score` read feature tables, run `TrustScorer`
(morphotrust.trust.scorer) and write results/trust/ (scorer, threshold, real and generated scores, the condition
summary, encoder adequacy, the histogram). The baselines' stage (`fit_scorers`, `baselines_stage`) writes
results/baselines/. The command line is morphotrust.trust.cli.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..config import check_section
from ..errors import InputError
from ..io import atomic_path, write_json, write_table
from .baselines import SCORERS, TRUST_TERMS, make_baselines, score_all, thresholds_of
from .scorer import TrustScorer, _python, check_features

METADATA_ATTRIBUTE = "Metadata_{}"
ENCODER_KEYS = ("encoder", "weights_sha256", "channels", "feature_dim", "image_size", "reduction")


def _encoder_identity(info: dict) -> dict:
    return {k: info[k] for k in ENCODER_KEYS if k in info}


def _encoder_name(info: dict) -> str:
    return str(info.get("encoder", "unknown encoder"))


def fitting_vocabulary(subset_manifest: pd.DataFrame, attributes=("cell_type", "sirna_id")) -> dict[str, dict]:
    """{attribute: {value: n}} of the real samples the trust scorer is fitted on, from the subset manifest.

    `fit_stage` fits on the seen-arm rows of results/features/real_train.parquet, i.e. the subset manifest's rows
    with Metadata_split == train and Metadata_arm == seen (controls and the unseen arm are never fitted on).
    A requested value absent from here cannot be scored: check generations against it before extracting features.
    """
    rows = subset_manifest[(subset_manifest["Metadata_split"] == "train") & (subset_manifest["Metadata_arm"] == "seen")]
    return {a: {_python(v): int(n) for v, n in rows[METADATA_ATTRIBUTE.format(a)].value_counts().items()}
            for a in attributes}


def _read_real(path, attributes: tuple) -> tuple[pd.DataFrame, np.ndarray, dict, list]:
    """Seen-arm rows (training support) of a real feature table: metadata, features, sidecar, feature columns."""
    from ..features import read_features

    meta, X, info = read_features(path)
    needed = ["Metadata_arm", *(METADATA_ATTRIBUTE.format(a) for a in attributes)]
    missing = [c for c in needed if c not in meta.columns]
    if missing:
        raise InputError(f"column(s) {', '.join(missing)} missing", file=path, expected="a real feature table")
    seen = (meta["Metadata_arm"] == "seen").to_numpy()
    if not seen.any():
        raise InputError("no rows with Metadata_arm == 'seen'", file=path,
                         expected="real features of the seen conditions (the trust score's training support)")
    X = check_features(X[seen], str(path))
    return meta[seen].reset_index(drop=True), X, info, _feature_columns(path)


def _feature_columns(path) -> list:
    import pyarrow.parquet as pq

    return [c for c in pq.read_schema(path).names if c.startswith("Feature_")]


def _attrs(meta: pd.DataFrame, attributes: tuple) -> dict:
    return {a: meta[METADATA_ATTRIBUTE.format(a)] for a in attributes}


def _with_file(error: InputError, file) -> InputError:
    return InputError(error.problem, file=file, where=error.where, expected=error.expected)


def trust_config(text: str) -> dict:
    """The `trust` config section (JSON), checked, with the schema's defaults filled in; unknown keys are an error."""
    return check_section("trust", text)


def _scores_table(meta: pd.DataFrame, scores: pd.DataFrame, scorer: TrustScorer) -> pd.DataFrame:
    table = pd.concat([meta.reset_index(drop=True), scores], axis=1)
    table["accepted"] = scorer.accept(scores)
    table["calibration_source"] = scorer.calibration_source_
    return table


def fit_stage(train, calibration, cfg: dict, out_dir, attributes=("cell_type", "sirna_id"),
              progress: bool = True) -> TrustScorer:
    """Fit on the seen-arm rows of `train`, calibrate on those of `calibration` (or on the fitting pool)."""
    out_dir = Path(out_dir)
    scorer = TrustScorer(attributes=attributes, regularization=cfg["regularization"],
                         calibration=cfg["calibration"], min_samples_per_value=cfg["min_samples_per_value"],
                         realism=cfg["realism"], quantile=cfg["quantile"])
    scorer._check_params()  # a bad option is reported as such, before any file is read
    fit_meta, X_fit, info, columns = _read_real(train, attributes)
    X_cal = cal_meta = None
    files = f"{train}"
    if cfg["calibration_source"] == "calibration_split":
        if calibration is None:
            raise InputError("calibration_source is calibration_split but no calibration features were given",
                             where="config trust.calibration_source", expected="--calibration FILE or fit_pool")
        cal_meta, X_cal, cal_info, cal_columns = _read_real(calibration, attributes)
        if _encoder_identity(cal_info) != _encoder_identity(info) or cal_columns != columns:
            raise InputError(f"encoder {_encoder_identity(cal_info)} with {len(cal_columns)} features differs from "
                             f"the training features' {_encoder_identity(info)} with {len(columns)}",
                             file=calibration, expected=f"features from the same encoder as {train}")
        files = f"{train} (fitting) / {calibration} (calibration)"
    try:
        scorer.fit(X_fit, _attrs(fit_meta, attributes), X_cal,
                   None if cal_meta is None else _attrs(cal_meta, attributes), progress=progress)
    except InputError as error:
        raise _with_file(error, files) from None
    extra = {"encoder": info, "feature_columns": columns, "train": str(train),
             "calibration": None if cal_meta is None else str(calibration)}
    scorer.save(out_dir / "scorer", extra=extra)
    write_json({"threshold": scorer.threshold_, "quantile": scorer.quantile,
                "calibration_source": scorer.calibration_source_, "n_calibration": scorer.n_calibration_samples_,
                "n_fit": scorer.n_fit_samples_, "calibration": scorer.calibration, "realism": scorer.realism,
                "fallback_values": scorer.fallback_values_, "encoder": _encoder_name(info)},
               out_dir / "threshold.json")
    real_meta = fit_meta if cal_meta is None else cal_meta
    write_table(_scores_table(real_meta, scorer.calibration_scores_, scorer), out_dir / "real_scores.parquet")
    print(f"fitted on {scorer.n_fit_samples_} real samples ({', '.join(f'{a}: {len(v)} values' for a, v in scorer.values_.items())}); "
          f"calibration source {scorer.calibration_source_} ({scorer.n_calibration_samples_} samples); "
          f"threshold κ = {scorer.threshold_:.4g} (q = {scorer.quantile}); "
          f"{len(scorer.fallback_values_)} value(s) fell back to per-attribute constants", flush=True)
    return scorer


def condition_summary(table: pd.DataFrame, attributes: tuple) -> pd.DataFrame:
    """Per Metadata_condition: arm, attribute values, n, acceptance rate, mean T / R / F / F_k."""
    if "Metadata_condition" not in table.columns:
        table = table.assign(Metadata_condition=table[[METADATA_ATTRIBUTE.format(a) for a in attributes]]
                             .astype(str).agg(":".join, axis=1))
    groups = table.groupby("Metadata_condition", sort=True)
    summary = pd.DataFrame({"n": groups.size()})
    for column in ["Metadata_arm", *(METADATA_ATTRIBUTE.format(a) for a in attributes)]:
        if column in table.columns:
            summary[column] = groups[column].agg(lambda s: "|".join(map(str, pd.unique(s))))
    summary["acceptance_rate"] = groups["accepted"].mean()
    for column in ["T", "R", "F", *(f"F_{a}" for a in attributes)]:
        summary[f"mean_{column}"] = groups[column].mean()
    summary["calibration_source"] = groups["calibration_source"].first()
    return summary.reset_index()


def plot_histogram(real_t: np.ndarray, table: pd.DataFrame, threshold: float, title: str, path) -> None:
    """Real calibration T vs generated T (per arm), with the threshold; x-axis clipped to the 1–99% range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [("real (calibration)", np.asarray(real_t))]
    arms = table["Metadata_arm"] if "Metadata_arm" in table.columns else pd.Series("all", index=table.index)
    for arm in sorted(arms.unique(), key=str):
        groups.append((f"generated, {arm}", table.loc[arms == arm, "T"].to_numpy()))
    everything = np.concatenate([g for _, g in groups])
    everything = everything[np.isfinite(everything)]
    low, high = np.quantile(everything, [0.01, 0.99])
    low, high = min(low, threshold), max(high, threshold)
    outside = int(np.sum((everything < low) | (everything > high)))
    bins = np.linspace(low, high, 61)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, values in groups:
        ax.hist(np.clip(values, low, high), bins=bins, density=True, histtype="step", linewidth=1.6,
                label=f"{label} (n = {len(values)})")
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold κ = {threshold:.3g}")
    clipped = f"; {outside} value(s) beyond the 1–99 % range drawn at its edges" if outside else ""
    ax.set_xlabel(f"trust score T = R + F (lower is better{clipped})")
    ax.set_ylabel("density")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def adequacy_stage(scorer_path, heldout, min_auroc: float, out_dir) -> pd.DataFrame:
    """Encoder adequacy (morphotrust.trust.adequacy) on the seen-arm rows of held-out real features."""
    from . import adequacy

    out_dir = Path(out_dir)
    scorer = TrustScorer.load(scorer_path)
    meta, X, info, columns = _read_real(heldout, scorer.attributes_)
    trained_on = scorer.extra_.get("encoder", {})
    if _encoder_identity(info) != _encoder_identity(trained_on) or columns != scorer.extra_.get("feature_columns",
                                                                                                 columns):
        raise InputError(f"features from encoder {_encoder_identity(info)}, but the scorer was fitted on "
                         f"{_encoder_identity(trained_on)}", file=heldout,
                         expected="held-out features from the encoder the scorer was fitted on")
    try:
        table = adequacy.adequacy_table(scorer, X, _attrs(meta, scorer.attributes_), min_auroc)
    except InputError as error:
        raise _with_file(error, heldout) from None
    warnings = adequacy.warnings(table)
    write_table(table, out_dir / "adequacy.csv")
    write_json({"heldout": str(heldout), "n_heldout": int(len(X)), "min_auroc": float(min_auroc),
                "encoder": _encoder_name(trained_on), "warnings": warnings,
                "not_informative": table.loc[table["status"] != adequacy.INFORMATIVE,
                                             ["attribute", "value", "margin_auroc", "status"]].to_dict("records")},
               out_dir / "adequacy.json")
    for line in warnings:
        print(f"WARNING: {line}", flush=True)
    print(f"encoder adequacy on {len(X)} held-out real sites: {(table['status'] == adequacy.INFORMATIVE).sum()} "
          f"of {len(table)} attribute values informative (margin AUROC >= {min_auroc:g})", flush=True)
    return table


def score_stage(scorer_path, features, real_scores, out_dir, progress: bool = True,
                coverage_path=None, adequacy_csv=None) -> pd.DataFrame:
    """Score generated features with their requested condition; write the table, summary and histogram.
    With `adequacy_csv`, each F_<attribute> gets an `F_<attribute>_adequacy` column: the adequacy status of the
    requested value (informative / not informative / not measured)."""
    from ..features import read_features

    out_dir = Path(out_dir)
    scorer = TrustScorer.load(scorer_path)
    trained_on = scorer.extra_.get("encoder", {})
    meta, X, info = read_features(features)
    columns = _feature_columns(features)
    if "feature_columns" in scorer.extra_ and columns != scorer.extra_["feature_columns"] \
            or _encoder_identity(info) != _encoder_identity(trained_on):
        raise InputError(f"features from encoder {_encoder_identity(info)} ({len(columns)} columns), but the scorer "
                         f"was fitted on {_encoder_identity(trained_on)}", file=features,
                         expected="features from the encoder the scorer was fitted on")
    missing = [METADATA_ATTRIBUTE.format(a) for a in scorer.attributes_ if METADATA_ATTRIBUTE.format(a) not in meta]
    if missing:
        raise InputError(f"column(s) {', '.join(missing)} missing", file=features,
                         expected="the requested condition of every generated sample")
    try:
        scores = scorer.score(X, _attrs(meta, scorer.attributes_), progress=progress)
    except InputError as error:
        raise _with_file(error, features) from None
    table = _scores_table(meta, scores, scorer)
    if coverage_path is not None:  # flag samples of unseen conditions whose values the seen arm covers thinly
        from ..subsets import coverage

        table = coverage.annotate(table, coverage.read(coverage_path))
    if adequacy_csv is not None:
        from . import adequacy

        flags = adequacy.flag_columns(pd.read_csv(adequacy_csv), table, scorer.attributes_)
        table = pd.concat([table, flags], axis=1)
        flagged = (flags != adequacy.INFORMATIVE).any(axis=1)
        if flagged.any():
            print(f"WARNING: {int(flagged.sum())} generated sample(s) request a value whose faithfulness this "
                  f"encoder cannot judge (see {adequacy_csv})", flush=True)
    write_table(table, out_dir / "generated_scores.parquet")
    write_table(table, out_dir / "generated_scores.csv")
    write_table(condition_summary(table, scorer.attributes_), out_dir / "condition_summary.csv")
    real = pd.read_parquet(real_scores, columns=["T"])["T"].to_numpy()
    title = (f"Trust scores — encoder {_encoder_name(trained_on)}; calibration: {scorer.calibration_source_}, "
             f"{scorer.calibration}; κ = P{100 * scorer.quantile:g} of real T")
    plot_histogram(real, table, scorer.threshold_, title, out_dir / "trust_histogram.png")
    print(f"scored {len(table)} generated samples; accepted {int(table['accepted'].sum())} "
          f"({table['accepted'].mean():.1%}) at κ = {scorer.threshold_:.4g}", flush=True)
    return table


# --------------------------------------------------------------------------------------------------------
# The baselines' stage: `morphotrust trust baselines`


def fit_scorers(scorer, train, calibration, cfg: dict) -> dict:
    """The baselines fitted on the trust scorer's real data: the seen-arm rows of the reduced `train` table,
    calibrated on those of `calibration` (None: on the fitting pool, as trust.calibration_source fit_pool)."""
    attributes = scorer.attributes_
    fit_meta, X_fit, _, columns = _read_real(train, attributes)
    X_cal = attrs_cal = None
    if calibration is not None:
        cal_meta, X_cal, _, cal_columns = _read_real(calibration, attributes)
        if cal_columns != columns:
            raise InputError("feature columns differ from the training table's", file=calibration,
                             expected=f"the columns of {train}")
        attrs_cal = _attrs(cal_meta, attributes)
    baselines = make_baselines(cfg, attributes, scorer.quantile)
    for estimator in baselines.values():
        try:
            estimator.fit(X_fit, _attrs(fit_meta, attributes), X_cal, attrs_cal)
        except InputError as error:
            raise _with_file(error, train if calibration is None else f"{train} / {calibration}") from None
    return baselines


def baselines_stage(scorer_path, train, calibration, generated, trust_scores, cfg: dict, out_dir) -> pd.DataFrame:
    """Score the generated features with every baseline; join T, R, F of the trust stage; accept each at its κ."""
    from ..features import read_features

    out_dir = Path(out_dir)
    scorer = TrustScorer.load(scorer_path)
    baselines = fit_scorers(scorer, train, calibration, cfg)
    meta, X, _ = read_features(generated)
    if _feature_columns(generated) != scorer.extra_.get("feature_columns", _feature_columns(generated)):
        raise InputError("feature columns differ from those the trust scorer was fitted on", file=generated,
                         expected=f"the reduced features of the same run as {train}")
    try:
        scores = score_all(baselines, X, _attrs(meta, scorer.attributes_))
    except InputError as error:
        raise _with_file(error, generated) from None
    trust = pd.read_parquet(trust_scores, columns=["Metadata_sample_id", *TRUST_TERMS])
    trust = trust.set_index(trust["Metadata_sample_id"].astype(str))
    ids = meta["Metadata_sample_id"].astype(str)
    if not ids.isin(trust.index).all():
        raise InputError("generated samples without a trust score", file=trust_scores,
                         where=f"e.g. {ids[~ids.isin(trust.index)].iloc[0]!r}", expected=f"every sample of {generated}")
    keep = ["Metadata_sample_id", "Metadata_condition", "Metadata_arm",
            *(METADATA_ATTRIBUTE.format(a) for a in scorer.attributes_)]
    table = meta[[c for c in keep if c in meta.columns]].reset_index(drop=True)
    for term in TRUST_TERMS:
        table[term] = trust.loc[ids.to_numpy(), term].to_numpy()
    table = pd.concat([table, scores], axis=1)
    thresholds = thresholds_of(scorer, baselines)
    for name, kappa in thresholds.items():
        table[f"accepted_{name}"] = table[name].to_numpy() <= kappa
    write_table(table, out_dir / "generated_scores.parquet")
    write_table(table, out_dir / "generated_scores.csv")
    write_json({"quantile": scorer.quantile, "calibration_source": scorer.calibration_source_,
                "n_fit": scorer.n_fit_samples_, "n_calibration": scorer.n_calibration_samples_,
                "scorers": {name: {"label": SCORERS[name][0], "what": SCORERS[name][1], "threshold": thresholds[name],
                                   "params": {k: v for k, v in vars(baselines[name]).items()
                                              if not k.endswith("_") and k != "attributes"}
                                   if name in baselines else {}}
                            for name in SCORERS},
                "knn_short_values": baselines["knn"].short_values_},
               out_dir / "thresholds.json")
    accepted = ", ".join(f"{name} {table[f'accepted_{name}'].mean():.0%}" for name in SCORERS)
    print(f"scored {len(table)} generated samples with {len(SCORERS)} scorers; accepted: {accepted}", flush=True)
    return table
