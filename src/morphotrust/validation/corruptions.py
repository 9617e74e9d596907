"""Held-out corruptions: which defects does each score catch, on this run's encoder and data?

The held-out real sites (seen arm, evaluation split: never used to fit, calibrate or threshold any scorer) are
scored clean, requested under their own condition, and as corrupted copies. Their clean features are the run's
own (results/reduction/real_evaluation.parquet); the corrupted images go through the same encoder, statistics
and reduction (`morphotrust.features.extract`, the fitted `FeatureReduction`). Corruptions, at the training
resolution, every random choice from the validation seed:

- `stain_zeroed`: one stain set to 0 (stain i mod 6 for the i-th site, so every stain is hit);
- `stains_swapped`: two stains, drawn at random per site, exchange their contents;
- `noise`: Gaussian noise with each stain's own standard deviation over the site added (SNR 1);
- `blur`: Gaussian blur of every stain, σ = BLUR_SIGMA px;
- `dim`: every stain × DIM_GAIN;
- `wrong_sirna`, `wrong_cell_type`: the image unchanged, requested under another value of that attribute
  (drawn at random among the fitted ones): realistic but unfaithful;
- `mode_collapse`: within each condition every held-out site replaced by one of them: each image is a real
  site, so no per-sample score can see it (AUROC ≈ 0.5 is the expected answer); KID and the decile classifiers,
  which judge sets, are the checks for it.

For every corruption and scorer: AUROC of the score separating corrupted from clean sites (1 = every corrupted
copy scored worse than every clean site, 0.5 = chance) and the share of each set accepted at the scorer's own
threshold. Writes corruptions.csv, corruptions.png and the headline corruptions.json.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from ..io import write_csv
from .common import save_figure, write_headline

IMAGE_CORRUPTIONS = ("stain_zeroed", "stains_swapped", "noise", "blur", "dim")
LABEL_CORRUPTIONS = {"wrong_sirna": "sirna_id", "wrong_cell_type": "cell_type"}  # corruption: attribute
CORRUPTIONS = (*IMAGE_CORRUPTIONS, *LABEL_CORRUPTIONS, "mode_collapse")
BLUR_SIGMA = 2.0
DIM_GAIN = 0.4
OUTPUTS = {"table": "corruptions.csv", "plot": "corruptions.png", "headline": "corruptions.json"}
IDENTITY_KEYS = ("encoder", "weights_sha256", "channels", "statistics", "image_size")


def corrupt(images: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Corrupted copies of `(n, 6, H, W)` uint8 sites (module docstring)."""
    from ..generated.standins import blur, drift

    out = images.copy()
    channels = images.shape[1]
    if kind == "stain_zeroed":
        out[np.arange(len(out)), np.arange(len(out)) % channels] = 0
    elif kind == "stains_swapped":
        for i in range(len(out)):
            a, b = rng.choice(channels, 2, replace=False)
            out[i, [a, b]] = images[i, [b, a]]
    elif kind == "noise":
        x = images.astype(np.float32)
        sd = np.maximum(x.std(axis=(2, 3), keepdims=True), 1.0)
        out = np.clip(np.rint(x + rng.normal(size=x.shape).astype(np.float32) * sd), 0, 255).astype(np.uint8)
    elif kind == "blur":
        out = np.stack([blur(image, BLUR_SIGMA) for image in images])
    elif kind == "dim":
        out = np.stack([drift(image, [DIM_GAIN] * channels) for image in images])
    else:
        raise ValueError(f"not an image corruption: {kind}")
    return out


def wrong_values(values: np.ndarray, vocabulary: list, rng: np.random.Generator) -> np.ndarray:
    """For each value, another one of `vocabulary`, drawn at random."""
    vocabulary = list(vocabulary)
    out = []
    for value in values:
        others = [v for v in vocabulary if v != value]
        out.append(others[rng.integers(len(others))] if others else value)
    return np.asarray(out, dtype=np.asarray(values).dtype)


def collapsed_rows(conditions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Row index replacing each row: one row drawn per condition, repeated for all of its rows."""
    conditions = np.asarray(conditions).astype(str)
    out = np.empty(len(conditions), dtype=int)
    for condition in np.unique(conditions):
        rows = np.flatnonzero(conditions == condition)
        out[rows] = rows[rng.integers(len(rows))]
    return out


def auroc_table(clean: pd.DataFrame, corrupted: dict, thresholds: dict) -> pd.DataFrame:
    """Long table: corruption × scorer AUROC (corrupted positive, higher score = less trusted) and acceptance.
    `clean`: scores (a column per scorer); `corrupted`: {corruption: scores}; `thresholds`: {scorer: κ}."""
    from sklearn.metrics import roc_auc_score

    from ..trust.baselines import SCORERS

    rows = []
    for kind, scores in corrupted.items():
        labels = np.r_[np.zeros(len(clean)), np.ones(len(scores))]
        for name, kappa in thresholds.items():
            values = np.r_[clean[name].to_numpy(float), scores[name].to_numpy(float)]
            finite = np.isfinite(values)
            auroc = roc_auc_score(labels[finite], values[finite]) if len(np.unique(labels[finite])) == 2 else np.nan
            rows.append({"corruption": kind, "scorer": name, "label": SCORERS[name][0], "n_clean": len(clean),
                         "n_corrupted": len(scores), "auroc": float(auroc),
                         "accepted_clean": float(np.mean(clean[name].to_numpy(float) <= kappa)),
                         "accepted_corrupted": float(np.mean(scores[name].to_numpy(float) <= kappa))})
    return pd.DataFrame(rows)


def plot_auroc(table: pd.DataFrame, path) -> None:
    import matplotlib.pyplot as plt

    grid = table.pivot(index="corruption", columns="scorer", values="auroc")
    grid = grid.reindex(index=[c for c in CORRUPTIONS if c in grid.index],
                        columns=list(dict.fromkeys(table["scorer"])))
    fig, ax = plt.subplots(figsize=(1.0 * grid.shape[1] + 2.5, 0.45 * grid.shape[0] + 1.6))
    image = ax.imshow(grid.to_numpy(float), cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    for (i, j), value in np.ndenumerate(grid.to_numpy(float)):
        ax.text(j, i, "–" if not np.isfinite(value) else f"{value:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(grid.shape[1]), grid.columns, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(grid.shape[0]), grid.index, fontsize=8)
    fig.colorbar(image, ax=ax, label="AUROC corrupted vs clean (0.5 = chance)")
    ax.set_title("Which defects each score catches (held-out real sites)", fontsize=10)
    save_figure(fig, path)


def headline(table: pd.DataFrame, seconds: float, n_heldout: int) -> dict:
    out = {"n_heldout": n_heldout, "seconds": seconds}
    for scorer, rows in table.groupby("scorer", sort=False):
        out[scorer] = {row.corruption: row.auroc for row in rows.itertuples()}
    return out


def _identity(info: dict) -> dict:
    return {k: info.get(k) for k in IDENTITY_KEYS}


def run(stack_path, clean_path, reduction_path, scorer_path, train, calibration, features_cfg: dict,
        baselines_cfg: dict, out_dir, seed: int = 0, threads: int | None = None) -> dict:
    """Score clean and corrupted held-out sites with every scorer; write the AUROC table, plot and headline."""
    from ..features import encoder_from_config, extract, iter_stack, read_features
    from ..reduction import FeatureReduction
    from ..trust import METADATA_ATTRIBUTE, TrustScorer, fit_scorers
    from ..trust.baselines import TRUST_TERMS, score_all, thresholds_of

    start = time.perf_counter()
    scorer = TrustScorer.load(scorer_path)
    baselines = fit_scorers(scorer, train, calibration, baselines_cfg)
    thresholds = thresholds_of(scorer, baselines)
    meta, X_clean, info = read_features(clean_path)
    seen = (meta["Metadata_arm"] == "seen").to_numpy()
    if not seen.any():
        raise InputError("no seen-arm rows", file=clean_path, expected="held-out real sites of the seen conditions")
    meta, X_clean = meta[seen].reset_index(drop=True), X_clean[seen]
    encoder, batch_size = encoder_from_config(features_cfg, threads)
    if _identity(encoder.info) != _identity(info):
        raise InputError(f"the features config describes {_identity(encoder.info)}, the held-out features were made "
                         f"by {_identity(info)}", file=clean_path, expected="features of this run's encoder")
    reduction = FeatureReduction.load(reduction_path)
    images = np.stack(list(iter_stack(stack_path, meta["Metadata_stack_index"].astype(int))))
    attributes = scorer.attributes_
    attrs = {a: meta[METADATA_ATTRIBUTE.format(a)].to_numpy() for a in attributes}

    def scores_of(X, requested):
        trust = scorer.score(X, requested)[list(TRUST_TERMS)]
        return pd.concat([trust, score_all(baselines, X, requested)], axis=1)

    rng = np.random.default_rng([seed, 5000])
    clean = scores_of(X_clean, attrs)
    corrupted = {}
    for kind in CORRUPTIONS:
        if kind in IMAGE_CORRUPTIONS:
            raw = extract(corrupt(images, kind, rng), len(images), encoder, batch_size, desc=f"features {kind}")
            corrupted[kind] = scores_of(reduction.transform(raw), attrs)
        elif kind in LABEL_CORRUPTIONS:
            attribute = LABEL_CORRUPTIONS[kind]
            requested = {**attrs, attribute: wrong_values(attrs[attribute], scorer.values_[attribute], rng)}
            corrupted[kind] = scores_of(X_clean, requested)
        else:
            corrupted[kind] = clean.iloc[collapsed_rows(meta["Metadata_condition"], rng)].reset_index(drop=True)
    table = auroc_table(clean, corrupted, thresholds)
    out = Path(out_dir)
    write_csv(table, out / OUTPUTS["table"])
    plot_auroc(table, out / OUTPUTS["plot"])
    seconds = time.perf_counter() - start
    result = headline(table, seconds, len(meta))
    write_headline(result, out / OUTPUTS["headline"])
    print(f"{len(meta)} held-out sites x {len(CORRUPTIONS)} corruptions scored by {len(thresholds)} scorers "
          f"in {seconds:.1f} s", flush=True)
    return result
