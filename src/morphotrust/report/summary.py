"""Run summary across plates and conditions: `results/report/summary.html` (+ qc_flags.csv, acceptance PNG)."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from ..data import SYNTHETIC_LABEL
from ..io import atomic_path, write_csv, write_text
from ..morphology.fields import PLATE
from . import figures
from .config import report_settings
from .html import esc, facts, fmt, img, missing, note, page, percent, section, table
from .inputs import (MANIFEST_COLUMNS, SITES_COLUMNS, Inputs, generated_banners, generated_measurements, is_synthetic,
                     on_plate, qc_measurements, read_json_optional, read_table, scored_generated,
                     validation_table)
from .plate import plate_file_name, plate_skipped
from .qc import FAILED, all_flags, focus_reference, well_summary
from .scorers import interval, paper_section, read_paper_figures, scorers_section
from .sections import acceptance_table

FLAG_FILE_COLUMNS = ["source", "experiment", "plate", "well", "condition", "id", "stain", "problem", "measurement",
                     "value", "rule"]

# Where every table is: (glob under the results folder, what it holds).
CATALOGUE = [
    ("data/sites.parquet", "one row per ingested real site (metadata + canonical TIFF path)"),
    ("data/qc_skipped.csv", "sites skipped at ingest and why (data QC)"),
    ("data/demo_grid.png", "picture of the synthetic demo: one site per cell type and siRNA"),
    ("subsets/manifest.parquet", "the study's real sites: condition, arm, split, row in the image stack"),
    ("subsets/manifest.csv", "the same, for a spreadsheet"),
    ("subsets/summary.csv", "real sites per condition and split"),
    ("subsets/conditions.csv", "the resolved conditions (config/conditions.yaml)"),
    ("subsets/stacks/*.npy", "real site images per split at the training resolution"),
    ("generated/*/manifest.parquet", "generated images: requested condition, image path, what made them"),
    ("features/*.parquet", "encoder features per image"),
    ("features/*.json", "encoder, weights and channel handling of each feature table"),
    ("trust/scorer.json", "fitted trust scorer: parameters, vocabularies, calibration (arrays in scorer.npz)"),
    ("trust/threshold.json", "the acceptance threshold κ and how it was calibrated"),
    ("trust/real_scores.parquet", "T, R, F of the real calibration sites"),
    ("trust/generated_scores.csv", "T, R, F, F_k and accept/abstain per generated image (also .parquet)"),
    ("trust/condition_summary.csv", "acceptance rate and mean T/R/F per condition"),
    ("trust/trust_histogram.png", "trust scores, real vs generated"),
    ("generation_trust/*.csv", "during-generation trust: per-step thresholds and decisions"),
    ("generation_trust/summary.json", "during-generation trust: compute saved vs quality kept"),
    ("autoencoder/autoencoder.json", "the autoencoder: latent shape and scaling, held-out PSNR per stain"),
    ("ceiling/ceiling.json", "the latent-space ceiling: held-out reconstructions scored like generations"),
    ("ceiling/generated_scores.csv", "T, R, F and accept/abstain of each held-out reconstruction"),
    ("morphology/real_image.parquet", "CellProfiler per-image measurements of the real sites"),
    ("morphology/generated_image.parquet", "CellProfiler per-image measurements of the generated images"),
    ("morphology/*_clean.parquet", "cleaned, standardised CellProfiler features"),
    ("morphology/cleaning_report.json", "what the feature cleaning kept and dropped"),
    ("morphology/scale.json", "the scale CellProfiler measured at: px, µm per px, how each source was resized"),
    ("baselines/generated_scores.csv", "every generated image scored by T, R, F and the simpler baselines, "
                                       "accepted or not by each (also .parquet)"),
    ("baselines/thresholds.json", "each score's threshold (the same quantile of its real calibration scores)"),
    ("validation/summary.json", "headline numbers of every validation analysis"),
    ("validation/*.csv", "validation tables (docs/design.md, Validation outputs)"),
    ("validation/*.png", "validation plots"),
    ("report/qc_flags.csv", "every image-quality flag of real sites and generated images"),
    ("report/plates/*.html", "QC report per plate"),
    ("report/generated.html", "QC report of the generated images"),
    ("logs/", "one log per job"),
]
KEY_FIGURES = [
    ("trust/trust_histogram.png", "Trust scores: real calibration sites vs generated images"),
    ("validation/kid_selection.png", "Selection gain: ΔKID of trust-accepted vs random picks"),
    ("validation/kid_ranking.png", "Condition ranking: mean T vs ΔKID (Spearman ρ)"),
    ("validation/centroid.png", "Centroid distance: trust-accepted vs random picks"),
    ("validation/deciles_cp.png", "Decile classifiers (CellProfiler features)"),
    ("validation/deciles_encoder.png", "Decile classifiers (encoder features)"),
    ("validation/graded_shift.png", "Trust vs distance of a condition from the training support"),
    ("coverage_experiment/coverage_experiment.png",
     "Controlled coverage violation: faithfulness AUROC and selection gain as an siRNA loses seen cell types"),
]
PACKAGES = ["numpy", "pandas", "pyarrow", "scipy", "scikit-learn", "matplotlib", "tifffile", "pillow", "torch",
            "timm"]


# --- per condition -----------------------------------------------------------------------------------------------

def verdict(row, rules: dict) -> str:
    if not np.isfinite(row["acceptance"]):
        return "not scored"
    if row["acceptance"] < rules["min_acceptance"]:
        return "not trusted: mostly abstained"
    z = row.get("z accepted", np.nan)
    if rules["max_centroid_z"] is not None and np.isfinite(z) and z > rules["max_centroid_z"]:
        return "check: accepted images far from real cells"
    if str(row.get("coverage", "ok")).startswith("low"):
        return "check: low coverage of its cell type or siRNA in training"
    return "trusted"


def condition_table(inputs: Inputs, generated: pd.DataFrame | None, rules: dict) -> pd.DataFrame | None:
    if generated is None or generated["T"].isna().all():
        return None
    base = acceptance_table(generated)
    for name, columns in (("centroid_per_condition.csv", {"mean_z_accepted": "z accepted",
                                                           "mean_z_random": "z random"}),
                          ("kid_per_condition.csv", {"delta_kid_accepted": "ΔKID accepted",
                                                     "delta_kid_random": "ΔKID random"}),
                          ("discrimination_encoder.csv", {"rank_energy": "rank (encoder)"}),
                          ("map_encoder.csv", {"mean_average_precision": "mAP (encoder)"})):
        frame = validation_table(inputs, name, ("condition",))
        if frame is not None:
            keep = {k: v for k, v in columns.items() if k in frame.columns}
            base = base.merge(frame[["condition", *keep]].rename(columns=keep), on="condition", how="left")
    if "coverage_low" in generated.columns:  # results/subsets/coverage.csv, joined by the trust stage
        flags = generated.groupby("Metadata_condition").agg(low=("coverage_low", "any"),
                                                            note=("coverage_note", "first"))
        low = base["condition"].map(flags["low"]).fillna(False).astype(bool)
        base["coverage"] = np.where(low, "low: " + base["condition"].map(flags["note"]).fillna("").astype(str), "ok")
    base["verdict"] = [verdict(row, rules) for _, row in base.iterrows()]
    flags = adequacy_flags(generated)
    if flags is not None:
        base = base.merge(flags, on="condition", how="left")
    return base


def condition_display(conditions: pd.DataFrame) -> pd.DataFrame:
    """The condition table as shown: paired figures in one column each ("accepted / random"), so that it fits the
    page width; results/report tables keep every column apart."""
    def pair(first: str, second: str) -> pd.Series:
        return conditions[first].map(fmt) + " / " + conditions[second].map(fmt)

    shown = conditions[["condition", "arm"]].copy()
    shown["accepted"] = [f"{a} of {n} ({percent(r)})" for a, n, r in
                         zip(conditions["accepted"], conditions["generated"], conditions["acceptance"])]
    shown["mean T / R / F"] = pair("mean T", "mean R") + " / " + conditions["mean F"].map(fmt)
    for name, columns in (("z accepted / random", ("z accepted", "z random")),
                          ("ΔKID accepted / random", ("ΔKID accepted", "ΔKID random"))):
        if set(columns) <= set(conditions.columns):
            shown[name] = pair(*columns)
    rest = [c for c in ("rank (encoder)", "mAP (encoder)", "coverage", "verdict", "F adequacy")
            if c in conditions.columns]
    return pd.concat([shown, conditions[rest]], axis=1)


def adequacy_body(results_dir: Path) -> str:
    """The encoder adequacy table of the trust stage (results/trust/adequacy.csv, .json) with its warnings."""
    csv, warnings_json = results_dir / "trust" / "adequacy.csv", results_dir / "trust" / "adequacy.json"
    if not csv.is_file():
        return ""
    frame = pd.read_csv(csv)
    warnings = (read_json_optional(warnings_json) or {}).get("warnings", [])
    body = ("<h3>Encoder adequacy (held-out real sites)</h3>"
            '<p class="small">For every value: the share of held-out real sites of that value whose nearest '
            "prototype (fitted precision) is that value, and the AUROC separating the faithfulness margins of sites "
            "of other values from those of the value when it is requested (0.5 = chance). Values below "
            f"{fmt(frame['min_auroc'].iloc[0]) if len(frame) else ''} are flagged: F cannot judge requests for them."
            "</p>")
    body += "".join(f'<p class="bad">{esc(line)}</p>' for line in warnings)
    return body + table(frame.drop(columns=["min_auroc"]),
                        row_class=lambda row: "" if row["status"] == "informative" else "bad")


def adequacy_flags(generated: pd.DataFrame) -> pd.DataFrame | None:
    """Per condition, the attributes whose requested value the encoder cannot judge (trust stage, adequacy.csv):
    e.g. "F sirna_id: not informative". Empty where every requested value is informative."""
    columns = [c for c in generated.columns if c.startswith("F_") and c.endswith("_adequacy")]
    if not columns:
        return None
    groups = generated.groupby("Metadata_condition", sort=False)
    def describe(frame):
        parts = []
        for column in columns:
            statuses = [str(v) for v in pd.unique(frame[column].dropna()) if str(v) != "informative"]
            if statuses:
                parts.append(f"F {column[2:-len('_adequacy')]}: {', '.join(statuses)}")
        return "; ".join(parts)
    return pd.DataFrame({"condition": list(groups.groups),
                         "F adequacy": [describe(frame) for _, frame in groups]})


def arm_table(inputs: Inputs) -> pd.DataFrame | None:
    """Per arm (all / seen / unseen): acceptance, selection gain, ρ(mean T, ΔKID), centroid Δz."""
    parts = []
    selection = validation_table(inputs, "kid_selection.csv", ("arm",))
    if selection is not None:
        keep = {"acceptance_rate": "acceptance", "fraction_conditions_improved": "conditions improved"}
        parts.append(selection[["arm", *[k for k in keep if k in selection]]].rename(columns=keep))
        parts.append(pooled_gain_column(selection))
    ranking = validation_table(inputs, "kid_ranking.csv", ("arm", "score", "spearman_rho"))
    if ranking is not None:
        rho = ranking[ranking["score"] == "T"][["arm", "spearman_rho", "p_value", "n_conditions"]]
        parts.append(rho.rename(columns={"spearman_rho": "ρ (mean T vs ΔKID)", "p_value": "p",
                                         "n_conditions": "conditions"}))
    centroid = validation_table(inputs, "centroid.csv", ("arm", "metric", "delta"))
    if centroid is not None:
        z = centroid[centroid["metric"] == "z"]
        parts.append(pd.DataFrame({"arm": z["arm"], "centroid Δz (accepted − random)": z["delta"],
                                   "95% CI": [f"{fmt(lo)} to {fmt(hi)}" for lo, hi in zip(z["ci_low"], z["ci_high"])]}))
    ranking = validation_table(inputs, "centroid_ranking.csv", ("arm", "spearman_rho", "ci_low", "ci_high"))
    if ranking is not None:
        parts.append(pd.DataFrame({"arm": ranking["arm"], "Spearman ρ(T, z) per image [95% CI]": [
            interval(v, lo, hi) for v, lo, hi in zip(ranking["spearman_rho"], ranking["ci_low"], ranking["ci_high"])]}))
    retrieval = map_table(inputs)
    if retrieval is not None:
        parts.append(retrieval)
    if not parts:
        return None
    out = parts[0]
    for part in parts[1:]:
        out = out.merge(part, on="arm", how="outer")
    order = {"all": 0, "seen": 1, "unseen": 2}
    out = out.sort_values("arm", key=lambda s: s.map(order).fillna(9)).reset_index(drop=True)
    if "acceptance" in out:
        out["acceptance"] = out["acceptance"].map(percent)
    if "conditions improved" in out:
        out["conditions improved"] = out["conditions improved"].map(percent)
    return out


def pooled_gain_column(selection: pd.DataFrame) -> pd.DataFrame:
    """The ΔKID selection gain pooled over each arm's conditions, with its bootstrap 95% interval (kid.py)."""
    column = "ΔKID gain, pooled [95% CI]"
    if "pooled_relative_improvement" not in selection:
        return pd.DataFrame({"arm": selection["arm"], column: "–"})
    return pd.DataFrame({"arm": selection["arm"], column: [
        interval(v, lo, hi, as_percent=True) for v, lo, hi in zip(selection["pooled_relative_improvement"],
                                                                   selection["pooled_relative_ci_low"],
                                                                   selection["pooled_relative_ci_high"])]})


def map_table(inputs: Inputs) -> pd.DataFrame | None:
    """Per arm: copairs retrieval mAP of trust-accepted vs condition-matched random generated images, per space
    (from results/validation/summary.json, distances_{space} -> map)."""
    summary = read_json_optional(None if inputs.validation_dir is None else inputs.validation_dir / "summary.json")
    rows = {}
    for space, name in (("cp", "CellProfiler"), ("encoder", "encoder")):
        found = ((summary or {}).get(f"distances_{space}") or {}).get("map") or {}
        for arm, values in found.items():
            if isinstance(values, dict) and "map_accepted" in values:
                rows.setdefault(arm, {"arm": arm})[f"mAP accepted / random / chance ({name})"] = (
                    f"{fmt(values['map_accepted'])} / {fmt(values['map_random'])} / {fmt(values['chance_map'])}")
    return pd.DataFrame(list(rows.values())) if rows else None


def decile_table(inputs: Inputs) -> pd.DataFrame | None:
    summary = read_json_optional(None if inputs.validation_dir is None else inputs.validation_dir / "summary.json")
    if not summary:
        return None
    rows = []
    for space in ("cp", "encoder"):
        for target, values in (summary.get(f"deciles_{space}") or {}).items():
            if isinstance(values, dict) and "most_trusted_decile" in values:
                rows.append({"features": {"cp": "CellProfiler", "encoder": "encoder"}[space], "predict": target,
                             "most trusted decile": values["most_trusted_decile"],
                             "least trusted decile": values["least_trusted_decile"],
                             "random ranking": values.get("random_ranking_mean"),
                             "real ceiling": values.get("real_ceiling"), "chance": values.get("chance")})
    return pd.DataFrame(rows) if rows else None


def coverage_section(results_dir: Path) -> str:
    """Per unseen condition and attribute: how often its value was seen in training (results/subsets/coverage.csv)."""
    from ..subsets import coverage

    path = Path(results_dir) / "subsets" / "coverage.csv"
    if not path.is_file():
        return ""
    cov = coverage.read(path)
    if cov.empty:
        return ""
    shown = cov[["condition", "attribute", "value", "n_seen_conditions", "n_train_sites", "n_contexts", "contexts",
                 "reason"]].rename(columns={"n_seen_conditions": "seen conditions", "n_train_sites": "training sites",
                                            "n_contexts": "other contexts", "contexts": "seen with",
                                            "reason": "flag"})
    low = cov["low"].to_numpy()
    body = table(shown, row_class=lambda row: "bad" if row["flag"] else "good")
    body += (f'<p class="small">{int(cov.loc[low, "condition"].nunique())} of {cov["condition"].nunique()} unseen '
             "condition(s) below the minimums of config subsets.coverage. Table: "
             '<code>results/subsets/coverage.csv</code>.</p>')
    experiment = Path(results_dir) / "coverage_experiment" / "coverage_experiment.csv"
    if experiment.is_file():
        body += "<h3>Controlled coverage violation (this run's experiment)</h3>" + table(pd.read_csv(experiment))
    return section(
        "coverage", "Are the unseen conditions covered by training?",
        "The trust score can judge a new combination only if each of its values was seen in training, in enough "
        "different contexts. Per unseen condition and attribute: in how many seen conditions and training sites its "
        "value occurs, and with which other values (e.g. the siRNA seen with 1 vs 3 cell types).",
        "every row green: each siRNA seen with several cell types and each cell type with several siRNAs. A red row "
        "does not stop the run, but its condition's trust scores rest on thin evidence.", body)


# --- QC across plates --------------------------------------------------------------------------------------------

def qc_overview(inputs: Inputs, plates: list[tuple[str, int]], cfg: dict,
                links: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per plate + one for the generated set, every flag as a long table for qc_flags.csv)."""
    qc = cfg["qc"]
    sites = read_table(inputs.sites, SITES_COLUMNS, "results/data/sites.parquet")
    real_cp = qc_measurements(inputs)
    reference = focus_reference(real_cp)
    rows, found = [], []
    for experiment, plate in plates:
        plate_cp = on_plate(real_cp, experiment, plate, PLATE)
        flags = all_flags(plate_cp, reference, qc, "Metadata_site_id")
        wells = well_summary(plate_cp, flags, qc)
        skipped = plate_skipped(inputs, experiment, plate)
        n_sites = None if sites is None else len(on_plate(sites, experiment, plate))
        if len(flags):
            found.append(flags.assign(source="real", experiment=experiment, plate=plate))
        rows.append({
            "plate": f'<a href="{esc(links.get((experiment, plate), ""))}">{esc(experiment)} Plate {plate}</a>',
            "sites ingested": n_sites, "data-QC problems at ingest": len(skipped),
            "measured": None if plate_cp is None else len(plate_cp),
            "blurred sites": int(flags.loc[flags["problem"] == "blurred", "id"].nunique()),
            "saturated sites": int(flags.loc[flags["problem"] == "saturated", "id"].nunique()),
            "sparse wells": ", ".join(wells.loc[wells["sparse"], "Metadata_well"]) or "none",
            "failed segmentation": int(flags.loc[flags["problem"] == FAILED, "id"].nunique()),
        })
    generated_cp = generated_measurements(inputs, None)
    if generated_cp is not None:
        flags = all_flags(generated_cp, reference, qc, "Metadata_sample_id")
        if len(flags):
            found.append(flags.assign(source="generated"))
        sparse = flags.loc[flags["problem"] == "sparse", "id"].nunique()
        rows.append({"plate": f'<a href="{esc(links.get("generated", ""))}">generated images</a>',
                     "sites ingested": None, "data-QC problems at ingest": None, "measured": len(generated_cp),
                     "blurred sites": int(flags.loc[flags["problem"] == "blurred", "id"].nunique()),
                     "saturated sites": int(flags.loc[flags["problem"] == "saturated", "id"].nunique()),
                     "sparse wells": f"{sparse} sparse image(s)",
                     "failed segmentation": int(flags.loc[flags["problem"] == FAILED, "id"].nunique())})
    flags = pd.concat(found, ignore_index=True) if found else pd.DataFrame(columns=FLAG_FILE_COLUMNS)
    return pd.DataFrame(rows), flags.reindex(columns=FLAG_FILE_COLUMNS)


def _segmentation_text(inputs: Inputs) -> str:
    """How many sites failed the segmentation gate, and how many real sites validation left out for it."""
    cleaning = None
    if inputs.morphology_real is not None:
        cleaning = read_json_optional(inputs.morphology_real.parent / "cleaning_report.json")
    if not cleaning or cleaning.get("n_real_rows_failed_segmentation") is None:
        return ""
    generated = cleaning.get("n_generated_rows_failed_segmentation")
    return (f'<p class="small">Nuclei segmentation gate (config morphology.gate): '
            f'{cleaning["n_real_rows_failed_segmentation"]} real site(s) of the study subset failed it and were left '
            f'out of validation; {"–" if generated is None else generated} generated image(s) failed it (kept: '
            "failing is what the trust score should catch).</p>")


def _failed(row) -> bool:
    """A QC overview row with any flagged site, sparse well or data-QC problem."""
    counts = [row["blurred sites"], row["saturated sites"], row["data-QC problems at ingest"],
              row.get("failed segmentation")]
    return any(pd.notna(c) and c > 0 for c in counts) or row["sparse wells"] not in ("none", "0 sparse image(s)")


# --- encoder, versions, files ------------------------------------------------------------------------------------

def encoder_tables(inputs: Inputs) -> tuple[pd.DataFrame | None, dict | None]:
    """(one row per feature sidecar in results/features/, the first sidecar's full info)."""
    folder = inputs.features_dir
    sidecars = sorted(folder.glob("*.json")) if folder is not None and folder.is_dir() else []
    rows = []
    for path in sidecars:
        info = read_json_optional(path) or {}
        checksum = info.get("weights_sha256")
        rows.append({"feature table": path.stem, "encoder": info.get("encoder"), "weights": info.get("weights"),
                     "weights sha256": f"{checksum[:16]}…" if checksum else None,
                     "channels": info.get("channels"), "features": info.get("feature_dim"),
                     "input px": info.get("image_size"), "device": info.get("device"),
                     "precision": info.get("precision"), "images": info.get("n_images")})
    first = read_json_optional(sidecars[0]) if sidecars else None
    return (pd.DataFrame(rows) if rows else None), first


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def cellprofiler_version(executable: str | None) -> str:
    """`{executable} --version` (CellProfiler prints e.g. 4.2.8.1), or why it is not known."""
    if not executable:
        return "not recorded"
    try:
        result = subprocess.run([executable, "--version"], capture_output=True, text=True, timeout=180)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"not known ({executable}: {type(error).__name__})"
    lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    if result.returncode != 0 or not lines:
        return f"not known ({executable} --version exited {result.returncode})"
    return lines[-1]


def software_versions(encoder_info: dict | None, snakemake_version: str | None, cellprofiler: str | None) -> list:
    import morphotrust

    rows = [("python", platform.python_version()),
            ("morphotrust", _version("morphotrust") or getattr(morphotrust, "__version__", "unknown")),
            ("snakemake", snakemake_version or _version("snakemake") or "not installed here")]
    for package in PACKAGES:
        value = _version(package)
        if package in ("torch", "timm") and encoder_info and encoder_info.get(f"{package}_version"):
            value = f"{encoder_info[f'{package}_version']} (computed the features)"
        rows.append((package, value or "not installed in the report's environment"))
    rows.append(("CellProfiler", cellprofiler_version(cellprofiler)))
    return rows


def catalogue(results_dir: Path, out_dir: Path) -> str:
    rows = []
    for pattern, meaning in CATALOGUE:
        if pattern.endswith("/"):
            paths = [results_dir / pattern] if (results_dir / pattern).is_dir() else []
        else:
            paths = sorted(results_dir.glob(pattern))
        if not paths:
            rows.append(f"<tr><td><code>{esc(results_dir / pattern)}</code></td><td>{esc(meaning)}</td>"
                        "<td class='small'>not produced</td></tr>")
            continue
        links = ", ".join(f'<a href="{esc(os.path.relpath(p, out_dir))}"><code>{esc(p)}</code></a>' for p in paths[:12])
        if len(paths) > 12:
            links += f" … and {len(paths) - 12} more"
        rows.append(f"<tr><td>{links}</td><td>{esc(meaning)}</td><td class='small'>{len(paths)} file(s)</td></tr>")
    return ('<table class="files"><thead><tr><th>file(s)</th><th>what it holds</th><th></th></tr></thead><tbody>'
            + "".join(rows) + "</tbody></table>")


# --- the page ----------------------------------------------------------------------------------------------------

def generation_trust_section(inputs: Inputs) -> str:
    """Early abandonment during generation: compute saved against quality kept (results/generation_trust/)."""
    summary = read_json_optional(inputs.generation_trust) if inputs.has("generation_trust") else None
    if not summary:
        return ""
    head = [("samples", summary.get("n_samples")),
            ("checked at sampler steps", f"{summary.get('check_steps')} of {summary.get('sampling_steps')}"),
            ("abandoned early", percent(summary.get("abandoned_fraction"))),
            ("sampler steps saved", percent(summary.get("steps_skipped_fraction"))),
            ("agreement with the post-generation decision", percent(summary.get("agreement"))),
            ("post-generation accepted samples kept", percent(summary.get("post_accepted_kept_fraction"))),
            ("post-generation abstained samples abandoned", percent(summary.get("post_abstained_abandoned_fraction")))]
    body = facts(head)
    gain = summary.get("selection_gain") or {}
    rows, empty = [], []
    for selection, label in (("during_generation", "kept during generation"),
                             ("post_generation", "accepted after generation")):
        by_arm = {arm: r for arm, r in ((gain.get("by_selection") or {}).get(selection) or {}).items()
                  if r["n_selected"]}
        empty += [] if by_arm else [label]
        rows += [{"selection": label, "arm": arm, "n": r["n_selected"], "mean z": r["mean_z_selected"],
                  "random mean z": r["mean_z_random"], "Δz": r["delta_z"],
                  "95% interval": f"[{fmt(r['ci_low'])}, {fmt(r['ci_high'])}]"} for arm, r in by_arm.items()]
    if gain.get("n_samples_with_z"):
        body += (f"<h3>Selection gain in CellProfiler space ({gain['n_samples_with_z']} samples with a centroid "
                 "distance)</h3>" + (table(pd.DataFrame(rows)) if rows else "")
                 + "".join(note(f"{esc(label)}: none of the samples with a centroid distance.") for label in empty))
    else:
        body += missing("Selection gain not available: no generated sample has a CellProfiler centroid distance.")
    return section(
        "generation", "Stopping hopeless samples during generation",
        "Part-way through sampling, each image's trust score is estimated from the generator's internal state; "
        "images already above the per-step threshold are abandoned, saving the remaining sampler steps. Below: the "
        "compute saved, how often the early decision matches the decision on the finished image, and how close the "
        "kept images are to real cells of their condition (centroid distance z) compared with random picks of the "
        "same size.",
        "many steps saved while agreement stays high; kept images with Δz below 0, as for the post-generation "
        "selection.", body)


def ceiling_section(results_dir: Path, generated: pd.DataFrame | None) -> str:
    """The autoencoder's held-out reconstructions scored like generations (results/ceiling/ceiling.json), beside
    the generated images' own figures: how much of the generator's result the latent space already decides."""
    from ..ceiling import ARMS, arm_figures

    ceiling = read_json_optional(Path(results_dir) / "ceiling" / "ceiling.json")
    if not ceiling:
        return ""
    per_sample = Path(results_dir) / "validation" / "centroid_per_sample.csv"
    per_sample = pd.read_csv(per_sample) if per_sample.is_file() else None
    rows = []
    for label, figures in (("reconstructions (the ceiling)", ceiling["arms"]),
                           ("generated images", {arm: arm_figures(generated, per_sample, arm) for arm in ARMS}
                            if generated is not None and "R" in generated else {})):
        rows += [{"images": label, "arm": arm, "n": f["n"], "accepted": percent(f["accepted"]),
                  "median R": f["median_R"], "median T": f["median_T"],
                  "median centroid z": f["median_z"], "measured by CellProfiler": f["n_measured"]}
                 for arm, f in figures.items() if f["n"]]
    psnr = ceiling.get("psnr_per_stain") or []
    shape = ceiling.get("latent_shape")
    body = facts([("autoencoder", ceiling.get("autoencoder")),
                  ("latents (channels × height × width)", " × ".join(map(str, shape)) if shape else None),
                  ("PSNR per stain w1..w6 (dB)", ", ".join(fmt(v) for v in psnr) if psnr else None),
                  ("mean PSNR (dB)", ceiling.get("psnr_mean"))])
    body += table(pd.DataFrame(rows))
    if not ceiling["arms"]["all"]["n_measured"] and ceiling["arms"]["all"]["n"]:
        body += note("CellProfiler measured none of the reconstructions: the feature cleaning dropped every row, "
                     "i.e. no cells were found in them (results/morphology/cleaning_report.json). The latent space "
                     "cannot hold cells yet: train the autoencoder longer before the flow model.")
    body += (
        '<p class="small">Tables: <code>results/ceiling/</code> (scores of the reconstructions, their centroid '
        "distances); picture: <code>results/autoencoder/reconstructions.png</code>. z = 0: as close to the real "
        "centroid of the condition as real sites are.</p>")
    return section(
        "ceiling", "The ceiling of the latent space (autoencoder reconstructions)",
        "The generator draws in the latent space of an autoencoder, so its images can at best look like what the "
        "decoder makes of real sites. Held-out real sites, encoded and decoded, are scored here exactly like "
        "generated images: if the trust score rejects them, it will reject every generation on these latents, "
        "however well the flow model is trained.",
        "reconstructions accepted at close to the real rate (~95%) with median z near 0; the generated images "
        "below that, by how much the flow model still has to learn.", body)


def external_judging(results_dir: Path, generated: pd.DataFrame | None) -> str | None:
    """How another generator's images were judged, in words (results/generated/external/judging.json, written by
    the conversion): resolution, crops, lost detail, composite mode and CellProfiler; None for other sources."""
    if generated is None or "Metadata_generator" not in generated.columns or \
            not generated["Metadata_generator"].astype(str).str.startswith("external").any():
        return None
    notes = read_json_optional(Path(results_dir) / "generated" / "external" / "judging.json")
    if not notes:
        return None
    channels = notes["channels"] if isinstance(notes["channels"], str) else "3x6 matrix"
    base = (f"{notes['n_images']} images ({notes['layout']} layout, value range {notes['value_range']}, channels "
            f"{channels}) at {notes['resolution_px']} px.")
    return " ".join([base, *notes["sentences"]])


def build_summary(inputs: Inputs, cfg: dict | None, plates: list[tuple[str, int]], out_dir, *,
                  results_dir="results", generated_html=None, plates_dir=None, snakemake_version: str | None = None,
                  cellprofiler: str | None = None) -> tuple[str, pd.DataFrame, bytes | None]:
    """(HTML text, QC flags table, acceptance-per-condition PNG or None) of the whole run."""
    cfg = report_settings(cfg)
    out_dir, results_dir = Path(out_dir), Path(results_dir)
    plates_dir = Path(plates_dir) if plates_dir else out_dir / "plates"
    generated_html = Path(generated_html) if generated_html else out_dir / "generated.html"
    links = {(e, int(p)): os.path.relpath(plates_dir / plate_file_name(e, p), out_dir) for e, p in plates}
    links["generated"] = os.path.relpath(generated_html, out_dir)
    manifest = read_table(inputs.manifest, MANIFEST_COLUMNS, "results/subsets/manifest.parquet")
    sites = read_table(inputs.sites, SITES_COLUMNS, "results/data/sites.parquet")
    generated = scored_generated(inputs)
    threshold = read_json_optional(inputs.threshold)
    rules = cfg["verdict"]

    banners = [("synthetic", SYNTHETIC_LABEL)] if is_synthetic(manifest, sites) else []
    banners += generated_banners(generated)

    # headline
    conditions = condition_table(inputs, generated, rules)
    encoder_rows, encoder_info = encoder_tables(inputs)
    head = []
    if conditions is not None:
        for arm in ("seen", "unseen"):
            mine = conditions[conditions["arm"] == arm]
            if len(mine):
                head.append((f"{arm} conditions trusted", f"{(mine['verdict'] == 'trusted').sum()} of {len(mine)}"))
        accepted = generated["accepted"].fillna(False).astype(bool)
        head.append(("generated images accepted",
                     f"{int(accepted.sum())} of {len(generated)} ({percent(accepted.mean())})"))
    if threshold:
        quantile = fmt(100 * threshold.get("quantile", np.nan))
        head.append(("threshold κ", f"{fmt(threshold.get('threshold'))} (P{quantile} of real calibration T)"))
    if encoder_info:
        head.append(("encoder", f"{encoder_info.get('encoder')} · {encoder_info.get('weights')}"))
    head.append(("plates", len(plates)))
    judging = external_judging(results_dir, generated)
    if judging:
        head.append(("external images judged", judging))
    scale = read_json_optional(results_dir / "morphology" / "scale.json")
    if scale and (not judging or "not applicable" not in judging):
        from ..morphology.scale import describe

        head.append(("CellProfiler scale", describe(scale)))
    overview = section("overview", "Overview",
                       "The run at a glance. Below: which conditions the generated images can be trusted for, how the "
                       "trust score fared against real cells, which plates or wells failed image QC, the encoder and "
                       "software used, and where every table is.", None,
                       facts(head) + f'<p>Reports: <a href="{esc(links["generated"])}">generated images</a>'
                       + (" · plates: " + ", ".join(f'<a href="{esc(links[(e, int(p))])}">{esc(e)} Plate {p}</a>'
                                                    for e, p in plates) if plates else "") + "</p>")

    # conditions
    acceptance_png = None
    if conditions is not None:
        summary_frame = conditions.rename(columns={"condition": "Metadata_condition", "arm": "Metadata_arm",
                                                   "acceptance": "acceptance_rate"})
        acceptance_png = figures.acceptance_bars(summary_frame, rules["min_acceptance"])
        shown = condition_display(conditions)
        body = img(acceptance_png, "acceptance per condition") + table(
            shown, row_class=lambda row: "good" if row["verdict"] == "trusted" else "bad")
        body += (f'<p class="small">Verdict rules (config report.verdict): <b>trusted</b> when at least '
                 f"{percent(rules['min_acceptance'])} of a condition's generated images are accepted"
                 + (f" and, where measured, its accepted images lie within z = {fmt(rules['max_centroid_z'])} of "
                    "real cells (centroid distance)" if rules["max_centroid_z"] is not None else "")
                 + ". z: centroid distance in units of real-to-real spread (0 = as close as real sites are to each "
                   "other); ΔKID: excess kernel distance to real images (0 = indistinguishable); rank: 1 = the "
                   "generated images are closest to their own condition among all real conditions; mAP: mean average "
                   "precision of the generated images retrieving real sites of their own condition among all real "
                   "sites (copairs, cosine; 1 = all own-condition sites first)."
                 + (" F adequacy: the requested value of this attribute is one the encoder does not separate from "
                    "the others on held-out real sites (results/trust/adequacy.csv): its F, hence T, says little "
                    "about faithfulness." if "F adequacy" in conditions.columns else "") + "</p>")
    else:
        body = missing("Not available: no trust scores (results/trust/generated_scores.parquet).")
    trust_conditions = section(
        "conditions", "Which conditions can be trusted",
        "Per condition (cell type : siRNA id), seen = the generator trained on it, unseen = a new combination: how "
        "many "
        "generated images the trust score accepted and, where the validation ran, how close the accepted images are "
        "to real cells of the condition compared with a random pick of the same size.",
        "most conditions trusted; unseen conditions are harder, so lower acceptance there is expected. Accepted "
        "images closer to real cells than random picks (lower z and ΔKID).", body)

    coverage_html = coverage_section(results_dir)
    arms = arm_table(inputs)
    deciles = decile_table(inputs)
    body = ""
    if arms is not None:
        body += "<h3>Per arm</h3>" + table(arms)
    if deciles is not None:
        body += ("<h3>Classifiers trained on trust deciles, tested on real cells (balanced accuracy)</h3>"
                 + table(deciles))
    figures_html = ""
    for relative, title in KEY_FIGURES:
        path = results_dir / relative
        if path.is_file():
            figures_html += f"<h3>{esc(title)}</h3>" + img(path.read_bytes(), title)
    body += figures_html
    validation = section(
        "validation", "Does the trust score work? (validation against real cells)",
        "Headline numbers per arm. Selection gain: how much closer to real images (ΔKID) the trust-accepted images "
        "are than random picks of the same size per condition (positive = trust helps), pooled over the arm's "
        "conditions against a real reference with the same condition mix (a condition holds too few accepted "
        "images for a stable KID of its own), with a condition-stratified bootstrap 95% interval; conditions "
        "improved: the share of conditions whose own ΔKID the selection lowers. ρ: Spearman correlation over conditions between "
        "the mean trust score and ΔKID (positive = the score ranks conditions the way real cells do). Centroid Δz: "
        "accepted minus random centroid distance (negative = trust helps), with its 95% bootstrap interval. "
        "Spearman ρ(T, z): over every generated image CellProfiler measured, does a worse trust score go with a "
        "larger distance from real cells (positive = T ranks images as CellProfiler does; bootstrap 95% interval). "
        "mAP: "
        "mean average precision (copairs) of generated images retrieving the real sites of their own condition among "
        "all real sites, for trust-accepted images, random picks of the same size per condition, and chance (1 = "
        "every own-condition site ranked first). Decile "
        "classifiers: trained on the most to the least trusted tenth of the generated images.",
        "selection gain above 0, ρ clearly above 0, Δz below 0 and Spearman ρ(T, z) above 0, with intervals "
        "that exclude 0; mAP of accepted "
        "above random, both above chance; the most trusted "
        "decile classifies real cells nearly as well as the real ceiling and the least trusted decile worse.",
        body or missing("Not available: no validation outputs (results/validation/)."))

    # QC
    plate_rows, flags = qc_overview(inputs, plates, cfg, links)
    qc_body = table(plate_rows, raw_columns=("plate",),
                    row_class=lambda row: "bad" if _failed(row) else "")
    qc_body += (f'<p class="small">{len(flags)} flag(s) in total, each with the rule that raised it: '
                '<a href="qc_flags.csv"><code>results/report/qc_flags.csv</code></a>. Rules: config report.qc.</p>')
    qc_body += _segmentation_text(inputs)
    qc_section = section(
        "qc", "Which plates or wells failed QC",
        "Per plate: sites ingested, problems found at ingest (missing or unreadable images: those sites were "
        "skipped), sites measured by CellProfiler, and the sites or wells flagged as blurred, saturated or sparse; the "
        "last row is the generated set. Open a plate's report for its map and the flagged sites.",
        "no skipped sites, no flagged sites or wells.", qc_body)

    # encoder, versions, files
    enc_body = (table(encoder_rows) if encoder_rows is not None
                else missing("Not available: no results/features/*.json."))
    if encoder_info and encoder_info.get("weights_description"):
        enc_body += f"<p>Weights: {esc(encoder_info['weights_description'])}</p>"
    if threshold:
        enc_body += "<h3>Trust score</h3>" + facts([
            ("threshold κ", threshold.get("threshold")), ("quantile of real calibration T", threshold.get("quantile")),
            ("calibration source", threshold.get("calibration_source")),
            ("F standardisation", threshold.get("calibration")), ("realism R", threshold.get("realism")),
            ("real samples fitted / calibrated", f"{threshold.get('n_fit')} / {threshold.get('n_calibration')}"),
            ("values using per-attribute constants", len(threshold.get("fallback_values") or []))])
    enc_body += adequacy_body(results_dir)
    encoder = section("encoder", "Encoder and weights",
                      "The image encoder whose features the trust score uses, its weights (with checksum), how the "
                      "trust threshold was set, and whether the encoder can tell each cell type and siRNA apart.",
                      None, enc_body)
    if encoder_info and str(encoder_info.get("encoder", "")).startswith("tf_efficientnet_lite0"):
        encoder = encoder.replace("</section>", note("These are ImageNet features (EfficientNet-Lite0), not DINOv3: "
                                                     "the offline default. Set features.encoder and features.weights "
                                                     "for a real study.") + "</section>")
    versions = section("versions", "Software versions", "The software that made this run.", None,
                       facts(software_versions(encoder_info, snakemake_version, cellprofiler)))
    files = section("files", "Where every table is",
                    "Every output of the run, relative to the working directory; links open the files.", None,
                    catalogue(results_dir, out_dir))

    generation = generation_trust_section(inputs)
    ceiling = ceiling_section(results_dir, generated)
    paper = read_paper_figures(cfg["paper_figures"])
    scorers = scorers_section(results_dir, paper)
    beside_paper = paper_section(results_dir, paper)
    nav = [("overview", "Overview"), ("conditions", "Conditions"),
           *([("coverage", "Coverage")] if coverage_html else []), ("validation", "Validation"),
           *([("scorers", "Simpler scores")] if scorers else []), *([("paper", "Paper")] if beside_paper else []),
           *([("generation", "During generation")] if generation else []),
           *([("ceiling", "Ceiling")] if ceiling else []), ("qc", "QC"), ("encoder", "Encoder"),
           ("versions", "Versions"), ("files", "Files")]
    body = "".join([overview, trust_conditions, coverage_html, validation, scorers, beside_paper, generation, ceiling,
                    qc_section, encoder, versions, files])
    document = page("morphotrust run summary", "Which generated cell images to trust: across plates and conditions",
                    banners, nav, body)
    return document, flags, acceptance_png


def write_summary(inputs: Inputs, cfg, plates, out_html, out_flags, out_acceptance=None, **kwargs) -> None:
    out_html = Path(out_html)
    document, flags, acceptance_png = build_summary(inputs, cfg, plates, out_html.parent, **kwargs)
    write_text(document, out_html)
    write_csv(flags, out_flags)
    if out_acceptance is not None:
        from .generated import _placeholder_png

        with atomic_path(out_acceptance) as tmp:
            Path(tmp).write_bytes(acceptance_png or _placeholder_png("Not available: no trust scores"))
