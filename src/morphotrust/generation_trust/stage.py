"""During-generation trust: score samples part-way through the sampler and abandon the hopeless ones early.

At each checked sampler step τ (time t_τ = τ / steps), the pooled hidden state of the conditional pass goes
through the translator g into encoder space, and the trust score T is evaluated there with the fitted
post-generation scorer and the requested condition. A sample with T > κ_τ is abandoned: no further model
evaluations. κ_τ is the scorer's quantile q of T over real calibration images sent through the same path
at t_τ (noised with the training interpolant, the model's hidden state, g), one threshold per step.

The run regenerates exactly the samples of the sampling stage (same seeds, sampler, steps, guidance and
batches), so each early decision can be compared with the post-generation accept / abstain of the same
sample. Compute saved = the fraction of sampler steps (and of model evaluations) not run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import stats
from tqdm import tqdm

from ..errors import InputError
from ..io import write_json, write_parquet, write_table
from ..shards import shard_conditions
from ..generator.data import ATTRIBUTE_COLUMNS, conditions_to_sample, encode, read_images, read_manifest, \
    training_rows
from ..generator.runtime import resolve_device
from ..generator.sample import (image_resolution, initial_noise, integrate, latent_noise_shape, load_sampler_model,
                                sample_id, sampling_plan)
from .translator import fit_translator, load_translator, noised_hidden, save_translator, translate

TRANSLATOR_NOISE_KEY = 1000   # noise seeds (seed, key + j, image): translator training at the j-th time
CALIBRATION_NOISE_KEY = 2000  # ... and per-step calibration at step τ


def check_times(sampling_steps: int, check_steps) -> list[float]:
    bad = [s for s in check_steps if not 0 <= s < sampling_steps]
    if bad:
        raise InputError(f"check step(s) {bad} outside the sampler's steps 0..{sampling_steps - 1}",
                         where="config generator.generation_trust.check_steps",
                         expected=f"step indices below generator.sampling_steps = {sampling_steps}")
    times = torch.linspace(0.0, 1.0, sampling_steps + 1, dtype=torch.float64).tolist()
    return [times[s] for s in check_steps]


def attribute_values(rows: pd.DataFrame) -> dict:
    """Requested attribute values in the form TrustScorer.score takes them."""
    return {"cell_type": rows[ATTRIBUTE_COLUMNS["cell_type"]].astype(str).to_numpy(),
            "sirna_id": rows[ATTRIBUTE_COLUMNS["sirna_id"]].astype(np.int64).to_numpy()}


# ----------------------------------------------------------------------------------------------- translator

def translator_stage(manifest_path, stacks_dir, checkpoint_path, features_path, out_path, cfg: dict,
                     device: str = "cpu", autoencoder=None) -> dict:
    """Fit the translator on the generator's training images and their real encoder features."""
    from ..features import read_features

    device = resolve_device(device)
    tcfg = cfg["translator"]
    model, state, codec = load_sampler_model(checkpoint_path, device, autoencoder)
    resolution = image_resolution(state)
    block = tcfg["block"] if tcfg["block"] >= 0 else state["model_config"]["depth"] + tcfg["block"]
    if not 0 <= block < state["model_config"]["depth"]:
        raise InputError(f"block {tcfg['block']} outside the model's {state['model_config']['depth']} blocks",
                         where="config generator.translator.block", expected="a block index (negative: from the end)")
    manifest = read_manifest(manifest_path)
    rows = training_rows(manifest, manifest_path)
    meta, features, info = read_features(features_path)
    if "Metadata_site_id" not in meta.columns:
        raise InputError("no Metadata_site_id column", file=features_path, expected="real features of the subsets")
    position = pd.Series(np.arange(len(meta)), index=meta["Metadata_site_id"].to_numpy())
    rows = rows[rows["Metadata_site_id"].isin(position.index)].reset_index(drop=True)
    if len(rows) < 10:
        raise InputError(f"only {len(rows)} of the generator's training sites have features", file=features_path,
                         expected="features of the train split (rows matching the manifest by Metadata_site_id)")
    targets = features[position.loc[rows["Metadata_site_id"]].to_numpy()]
    images = read_images(stacks_dir, rows, resolution)
    codes = encode(rows, state["vocabularies"], manifest_path)
    times = sorted(set(map(float, tcfg["t_values"])) |
                   set(check_times(cfg["sampling_steps"], cfg["generation_trust"]["check_steps"])))
    hidden, t_column, target_rows, image_ids = [], [], [], []
    for j, t in enumerate(times):
        hidden.append(noised_hidden(model, images, codes["cell_type"], codes["sirna_id"], t, block, cfg["seed"],
                                    key=TRANSLATOR_NOISE_KEY + j, progress=True,
                                    precision=cfg["precision"], codec=codec))
        t_column.append(np.full(len(rows), t))
        target_rows.append(targets)
        image_ids.append(np.arange(len(rows)))
    translator, history = fit_translator(np.concatenate(hidden), np.concatenate(t_column),
                                         np.concatenate(target_rows), np.concatenate(image_ids), tcfg, cfg["seed"])
    summary = dict(block=block, t_values=times, checkpoint=state["fingerprint"], checkpoint_step=int(state["step"]),
                   encoder=info, features=str(features_path), **history)
    save_translator(translator, summary, out_path)
    print(f"translator: held-out loss {history['held_out_before']:.4f} -> {history['held_out_after']:.4f} "
          f"(train {history['train_before']:.4f} -> {history['train_after']:.4f}; 2 - 2 cos)", file=sys.stderr)
    return summary


# ----------------------------------------------------------------------------------------------- thresholds

def calibrate_thresholds(model, translator, block: int, images: np.ndarray, rows: pd.DataFrame, codes: dict,
                         sampling_steps: int, check_steps, score_fn, quantile: float, seed: int,
                         precision: str = "auto", codec=None) -> pd.DataFrame:
    """κ_τ per checked step: quantile q of T over real images noised to t_τ and sent through g."""
    records = []
    for step, t in zip(check_steps, check_times(sampling_steps, check_steps)):
        pooled = noised_hidden(model, images, codes["cell_type"], codes["sirna_id"], t, block, seed,
                               key=CALIBRATION_NOISE_KEY + step, progress=True, precision=precision, codec=codec)
        scores = score_fn(translate(translator, torch.from_numpy(pooled), t), attribute_values(rows))
        total = scores["T"].to_numpy()
        records.append(dict(step=int(step), t=float(t), threshold=float(np.quantile(total, quantile)),
                            quantile=quantile, n_real=int(len(total)), real_mean_T=float(total.mean()),
                            real_median_T=float(np.median(total))))
    return pd.DataFrame(records)


# ----------------------------------------------------------------------------------------------- early abandonment

def early_abandonment(model, translator, block: int, conditions: pd.DataFrame, codes: dict, cfg: dict,
                      thresholds: pd.DataFrame, score_fn, name: str,
                      keep_conditions: set | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Sample every condition as the sampling stage does, checking T at the chosen steps.

    Returns (per-step scores, one row per sample: abandoned_at, steps_run, evaluations, early_accept).
    With `keep_conditions` (a shard's condition group) only the batches holding one of them run, as in the
    unsharded run, and only their rows are kept; the per-step scores then carry _chunk and _position, the
    order `merge_shards` restores.
    """
    steps = cfg["sampling_steps"]
    kappa = dict(zip(thresholds["step"], thresholds["threshold"]))
    plan = sampling_plan(conditions, codes, cfg["samples_per_condition"], cfg["seed"])
    plan["Metadata_sample_id"] = [sample_id(name, c, k) for c, k in zip(plan["Metadata_condition"], plan["k"])]
    info = conditions.set_index("Metadata_condition")
    requested = pd.DataFrame({column: info.loc[plan["Metadata_condition"], column].to_numpy()
                              for column in ("Metadata_cell_type", "Metadata_sirna_id", "Metadata_arm")})
    batch = cfg["sampling_batch_size"]
    step_records, sample_records = [], []
    starts = range(0, len(plan), batch)
    if keep_conditions is not None:
        starts = [s for s in starts if keep_conditions & set(plan["Metadata_condition"].iloc[s: s + batch])]
    for start in tqdm(starts, desc="generation trust", unit="batch", file=sys.stderr, mininterval=5):
        chunk = plan.iloc[start: start + batch].reset_index(drop=True)
        chunk_requested = requested.iloc[start: start + batch].reset_index(drop=True)
        mine = (np.ones(len(chunk), dtype=bool) if keep_conditions is None
                else chunk["Metadata_condition"].isin(keep_conditions).to_numpy())

        def on_check(step, t, pooled, alive):
            scores = score_fn(translate(translator, pooled, t), attribute_values(chunk_requested.iloc[alive]))
            keep = scores["T"].to_numpy() <= kappa[step]
            table = scores.assign(Metadata_sample_id=chunk["Metadata_sample_id"].to_numpy()[alive], step=step, t=t,
                                  threshold=kappa[step], abandoned=~keep)
            if keep_conditions is not None:
                table = table.assign(_chunk=start, _position=start + alive)[mine[alive]]
            step_records.append(table)
            return keep

        noise = initial_noise(chunk["seed"].tolist(), latent_noise_shape(model))
        _, _, abandoned_at, evaluations = integrate(
            model, noise, torch.tensor(chunk["cell"].to_numpy()), torch.tensor(chunk["sirna"].to_numpy()),
            steps=steps, method=cfg["sampler"], guidance=cfg["guidance_scale"],
            check_steps=cfg["generation_trust"]["check_steps"], hidden_block=block,
            on_check=on_check, precision=cfg["precision"])
        sample_records.append(pd.DataFrame({
            "Metadata_sample_id": chunk["Metadata_sample_id"], "Metadata_condition": chunk["Metadata_condition"],
            "Metadata_arm": chunk_requested["Metadata_arm"], "abandoned_at_step": abandoned_at,
            "steps_run": np.where(abandoned_at < 0, steps, abandoned_at), "model_evaluations": evaluations,
            "early_accept": abandoned_at < 0})[mine])
    step_scores = pd.concat(step_records, ignore_index=True)
    first = ["Metadata_sample_id", "step", "t"]
    step_scores = step_scores[first + [c for c in step_scores.columns if c not in first]]
    return step_scores, pd.concat(sample_records, ignore_index=True)


def summarise(decisions: pd.DataFrame, step_scores: pd.DataFrame, thresholds: pd.DataFrame, cfg: dict,
              full_evaluations: int) -> dict:
    """Compute saved vs quality kept (agreement with the post-generation decision where it is known)."""
    steps = cfg["sampling_steps"]
    n = len(decisions)
    summary = dict(
        n_samples=n, sampler=cfg["sampler"], sampling_steps=steps, guidance_scale=cfg["guidance_scale"],
        check_steps=list(cfg["generation_trust"]["check_steps"]),
        thresholds=thresholds[["step", "t", "threshold", "n_real", "real_mean_T"]].to_dict("records"),
        abandoned_fraction=float(1 - decisions["early_accept"].mean()),
        abandoned_per_step={int(s): int((decisions["abandoned_at_step"] == s).sum())
                            for s in cfg["generation_trust"]["check_steps"]},
        steps_skipped_fraction=float(1 - decisions["steps_run"].sum() / (n * steps)),
        evaluations_saved_fraction=float(1 - decisions["model_evaluations"].sum() / (n * full_evaluations)),
    )
    if "post_accept" in decisions.columns:
        known = decisions.dropna(subset=["post_accept"])
        early, post = known["early_accept"].astype(bool), known["post_accept"].astype(bool)
        summary.update(
            n_with_post_decision=int(len(known)),
            agreement=float((early == post).mean()),
            post_accept_rate=float(post.mean()),
            kept_post_accept_rate=float(post[early].mean()) if early.any() else None,
            post_accepted_kept_fraction=float(early[post].mean()) if post.any() else None,
            post_abstained_abandoned_fraction=float((~early[~post]).mean()) if (~post).any() else None,
            confusion=dict(both_accept=int((early & post).sum()), both_abstain=int((~early & ~post).sum()),
                           abandoned_but_post_accept=int((~early & post).sum()),
                           kept_but_post_abstain=int((early & ~post).sum())),
        )
        merged = step_scores.merge(decisions[["Metadata_sample_id", "post_T"]], on="Metadata_sample_id")
        summary["spearman_step_T_vs_post_T"] = {
            int(s): float(stats.spearmanr(g["T"], g["post_T"]).statistic) if len(g) > 2 else None
            for s, g in merged.groupby("step")}
        summary["by_arm"] = {
            arm: dict(n=int(len(g)), abandoned_fraction=float(1 - g["early_accept"].mean()),
                      agreement=float((g["early_accept"] == g["post_accept"].astype(bool)).mean()),
                      post_accept_rate=float(g["post_accept"].astype(bool).mean()))
            for arm, g in known.groupby("Metadata_arm")}
    return summary


def selection_gain(decisions: pd.DataFrame, centroid_per_sample: pd.DataFrame, validation_cfg: dict | None,
                   source="the centroid per-sample table") -> dict:
    """What early abandonment buys in CellProfiler space, independent of the encoder.

    On the samples whose real-spread-normalised centroid distance z is known (the validation stage's
    centroid_per_sample table), the samples kept by during-generation trust are compared with
    condition-matched random subsets of the same per-condition sizes: Δz = mean z(kept) − mean z(random),
    with a bootstrap 95% interval, per arm, exactly as the validation stage compares post-generation
    acceptance with random (whose figures on the same samples are given beside it). Negative Δz: the kept
    samples look more like real cells of their condition than a random choice would.
    """
    from ..validation.centroid import accepted_vs_random
    from ..validation.common import settings

    cfg = settings(validation_cfg)
    for column in ("sample_id", "condition", "arm", "z", "distance", "excess_distance", "accepted"):
        if column not in centroid_per_sample.columns:
            raise InputError(f"no {column} column", file=source,
                             expected="results/validation/centroid_per_sample.csv of the validation stage")
    early = decisions.set_index("Metadata_sample_id")["early_accept"]
    rows = centroid_per_sample[centroid_per_sample["sample_id"].isin(early.index)].reset_index(drop=True)
    out = dict(n_samples_with_z=int(np.isfinite(rows["z"].to_numpy(dtype=float)).sum()),
               quality_measure="CellProfiler centroid distance z (validation stage; 0 = as close as real cells)")
    if not out["n_samples_with_z"]:
        return {**out, "by_selection": None, "note": "no sample of this generator has a defined z"}
    by_selection = {}
    for name, selected in (("during_generation", early.loc[rows["sample_id"]].to_numpy(dtype=bool)),
                           ("post_generation", rows["accepted"].to_numpy(dtype=bool))):
        table, _ = accepted_vs_random(rows.assign(accepted=selected), cfg["n_random_seeds"],
                                      cfg["centroid"]["n_bootstrap"], cfg["seed"])
        z = table[table["metric"] == "z"]
        by_selection[name] = {
            row.arm: dict(n_selected=int(row.n_accepted), mean_z_selected=_finite(row.mean_accepted),
                          mean_z_random=_finite(row.mean_random), delta_z=_finite(row.delta),
                          ci_low=_finite(row.ci_low), ci_high=_finite(row.ci_high))
            for row in z.itertuples()}
    return {**out, "by_selection": by_selection}


def _finite(value) -> float | None:
    return float(value) if np.isfinite(value) else None


def generation_trust_stage(manifest_path, stacks_dir, checkpoint_path, translator_path, scorer_path,
                           generated_scores_path, out_dir, cfg: dict, device: str = "cpu",
                           centroid_path=None, validation_cfg: dict | None = None, autoencoder=None) -> dict:
    """Per-step thresholds, early abandonment of every sample, and its comparison with the post-generation
    decisions; with `centroid_path` (the validation stage's centroid_per_sample.csv) also its selection gain."""
    thresholds, step_scores, decisions = during_generation(manifest_path, stacks_dir, checkpoint_path,
                                                           translator_path, scorer_path, cfg, device, autoencoder)
    return compare_and_write(thresholds, step_scores, decisions, translator_path, scorer_path, generated_scores_path,
                             out_dir, cfg, centroid_path, validation_cfg)


SHARD_TABLES = ("thresholds", "step_scores", "decisions")


def shard_stage(manifest_path, stacks_dir, checkpoint_path, translator_path, scorer_path, shard_prefix, cfg: dict,
                shard: tuple[int, int], device: str = "cpu", autoencoder=None) -> None:
    """One shard (condition group, morphotrust.shards) of the early abandonment: `shard_prefix`.{thresholds,
    step_scores,decisions}.parquet. Every shard calibrates the (identical) per-step thresholds itself."""
    tables = during_generation(manifest_path, stacks_dir, checkpoint_path, translator_path, scorer_path, cfg,
                               device, autoencoder, shard)
    for name, table in zip(SHARD_TABLES, tables):
        write_parquet(table, f"{shard_prefix}.{name}.parquet")


def merge_shards(shard_decisions, translator_path, scorer_path, generated_scores_path, out_dir, cfg: dict,
                 centroid_path=None, validation_cfg: dict | None = None) -> dict:
    """The outputs of the unsharded stage from its shards' PREFIX.decisions.parquet files (and their sibling
    tables), in shard order, row for row."""
    shard_prefixes = [str(p).removesuffix(".decisions.parquet") for p in shard_decisions]
    parts = {name: [pd.read_parquet(f"{p}.{name}.parquet") for p in shard_prefixes] for name in SHARD_TABLES}
    thresholds = parts["thresholds"][0]
    if any(not t.equals(thresholds) for t in parts["thresholds"]):
        raise InputError("the shards calibrated different thresholds", file=f"{shard_prefixes[0]}.thresholds.parquet",
                         expected="shards of one run (same checkpoint, translator, scorer and config)")
    step_scores = pd.concat(parts["step_scores"], ignore_index=True)  # unsharded order: batch, step, sample
    step_scores = step_scores.sort_values(["_chunk", "step", "_position"], kind="stable", ignore_index=True)
    decisions = pd.concat(parts["decisions"], ignore_index=True)
    return compare_and_write(thresholds, step_scores.drop(columns=["_chunk", "_position"]), decisions,
                             translator_path, scorer_path, generated_scores_path, out_dir, cfg, centroid_path,
                             validation_cfg)


def during_generation(manifest_path, stacks_dir, checkpoint_path, translator_path, scorer_path, cfg: dict,
                      device: str = "cpu", autoencoder=None, shard: tuple[int, int] = (0, 1)):
    """(per-step thresholds, per-step scores, per-sample early decisions) of every condition, or of one shard's."""
    from ..trust import TrustScorer

    device = resolve_device(device)
    model, state, codec = load_sampler_model(checkpoint_path, device, autoencoder)
    translator, tmeta = load_translator(translator_path)
    if tmeta["checkpoint"] != state["fingerprint"] or tmeta["checkpoint_step"] != int(state["step"]):
        raise InputError("the translator was fitted on another generator checkpoint", file=translator_path,
                         expected=f"a translator fitted on {checkpoint_path} (rerun the translator rule)")
    block = tmeta["block"]
    scorer = TrustScorer.load(scorer_path)
    if scorer.n_features_in_ != translator.out_dim:
        raise InputError(f"scorer expects {scorer.n_features_in_} features, the translator gives {translator.out_dim}",
                         file=scorer_path, expected="the scorer fitted on the features the translator was trained on")

    def score_fn(features, attrs):
        return scorer.score(features, attrs)

    manifest = read_manifest(manifest_path)
    resolution = image_resolution(state)
    calibration = manifest[(manifest["Metadata_split"] == "calibration") & (manifest["Metadata_arm"] == "seen")]
    if calibration.empty:
        calibration = training_rows(manifest, manifest_path)
        print("no seen calibration sites: per-step thresholds calibrated on the training sites", file=sys.stderr)
    calibration = calibration.reset_index(drop=True)
    cgcfg = cfg["generation_trust"]
    thresholds = calibrate_thresholds(
        model, translator, block, read_images(stacks_dir, calibration, resolution), calibration,
        encode(calibration, state["vocabularies"], manifest_path), cfg["sampling_steps"], cgcfg["check_steps"],
        score_fn, scorer.quantile, cfg["seed"], precision=cfg["precision"], codec=codec)
    thresholds["calibration_split"] = calibration["Metadata_split"].iloc[0]

    conditions = conditions_to_sample(manifest)
    codes = encode(conditions, state["vocabularies"], manifest_path)
    keep = None if shard[1] == 1 else set(shard_conditions(conditions["Metadata_condition"], *shard))
    step_scores, decisions = early_abandonment(model, translator, block, conditions, codes, cfg,
                                               thresholds, score_fn, state["generator"], keep)
    return thresholds, step_scores, decisions


def compare_and_write(thresholds, step_scores, decisions, translator_path, scorer_path, generated_scores_path,
                      out_dir, cfg: dict, centroid_path=None, validation_cfg: dict | None = None) -> dict:
    """Compare the early decisions with the post-generation ones, summarise, and write the stage's files."""
    from ..trust import TrustScorer

    out_dir = Path(out_dir)
    _, tmeta = load_translator(translator_path)
    quantile = TrustScorer.load(scorer_path).quantile
    post = pd.read_parquet(generated_scores_path)
    for column in ("Metadata_sample_id", "T", "accepted"):
        if column not in post.columns:
            raise InputError(f"no {column} column", file=generated_scores_path,
                             expected="the trust stage's generated_scores table")
    post = post[["Metadata_sample_id", "T", "accepted"]].rename(columns={"T": "post_T", "accepted": "post_accept"})
    decisions = decisions.merge(post, on="Metadata_sample_id", how="left")
    missing = int(decisions["post_T"].isna().sum())
    if missing == len(decisions):
        raise InputError("none of this generator's samples is in the post-generation scores",
                         file=generated_scores_path, expected=f"rows for samples like {decisions['Metadata_sample_id'][0]}")
    full = cfg["sampling_steps"] * (2 if cfg["sampler"] == "heun" else 1)
    summary = summarise(decisions, step_scores, thresholds, cfg, full)
    summary.update(n_without_post_decision=missing, scorer_quantile=quantile,
                   translator=dict(block=tmeta["block"], t_values=tmeta["t_values"],
                                   held_out_loss_before=tmeta["held_out_before"],
                                   held_out_loss_after=tmeta["held_out_after"]))
    summary["selection_gain"] = None
    if centroid_path:
        summary["selection_gain"] = selection_gain(decisions, pd.read_csv(centroid_path), validation_cfg, centroid_path)
    write_table(thresholds, out_dir / "thresholds.csv")
    write_parquet(step_scores, out_dir / "step_scores.parquet")
    write_parquet(decisions, out_dir / "decisions.parquet")
    write_table(decisions, out_dir / "decisions.csv")
    write_json(summary, out_dir / "summary.json")
    print(f"abandoned {summary['abandoned_fraction']:.1%} of samples; {summary['steps_skipped_fraction']:.1%} of "
          f"sampler steps skipped; agreement with post-generation decisions {summary.get('agreement')}",
          file=sys.stderr)
    return summary
