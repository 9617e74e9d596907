"""Report panels shared by the plate reports and the generated-set report."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import InputError
from ..images import read_site
from . import figures
from .html import composite_legend, esc, fmt, img, missing, note, percent, section, table
from .inputs import Inputs, read_json_optional, read_table, stack_image, validation_table
from .qc import measured

STAIN_WORDS = {"DNA": "DNA (Hoechst)", "ER": "ER (concanavalin A)", "Actin": "actin (phalloidin)",
               "RNA": "RNA (SYTO14)", "Mito": "mitochondria (MitoTracker)", "Golgi": "Golgi/membrane (WGA)"}
OBJECT_WORDS = {"Nuclei": "nuclei", "Cells": "cells", "Cytoplasm": "cytoplasm"}
SHAPE_WORDS = {"Area": "area (pixels², mean over {o})", "FormFactor": "roundness of {o} (form factor, 1 = circle)",
               "Eccentricity": "elongation of {o} (eccentricity, 0 = circle)", "Perimeter": "perimeter of {o} (pixels)"}


def feature_label(column: str) -> str:
    """A CellProfiler per-image column in plain words: Cells_AreaShape_Area_Mean -> area (pixels², mean over cells)."""
    parts = column.split("_")
    if parts[:2] == ["Image", "Count"] and len(parts) == 3:
        return f"{OBJECT_WORDS.get(parts[2], parts[2])} per site (count)"
    if parts[0] in OBJECT_WORDS and parts[-1] == "Mean" and len(parts) >= 4:
        objects = OBJECT_WORDS[parts[0]]
        if parts[1] == "AreaShape" and parts[2] in SHAPE_WORDS and len(parts) == 4:
            return SHAPE_WORDS[parts[2]].format(o=objects)
        if parts[1] == "Intensity" and parts[2] == "MeanIntensity" and len(parts) == 5:
            return f"{STAIN_WORDS.get(parts[3], parts[3])} brightness in {objects} (mean intensity, 0-1)"
    return column.replace("_", " ")


def _conditions_order(frame: pd.DataFrame) -> list[str]:
    arms = frame.drop_duplicates("Metadata_condition").set_index("Metadata_condition")["Metadata_arm"].astype(str)
    return sorted(arms.index, key=lambda c: (arms[c] != "seen", c))


# --- feature distributions -------------------------------------------------------------------------------------

def features_section(real_cp: pd.DataFrame | None, generated_cp: pd.DataFrame | None, features: list[str],
                     scope: str) -> str:
    what = (f"A few CellProfiler measurements that a biologist can read, for {scope}: each dot is one site (real) or "
            "one generated image, the black tick the median. Generated images are split into those the trust score "
            "accepted and those it abstained on.")
    good = ("the accepted generated images sit where the real sites sit; abstained ones may be off (that is why "
            "they were set aside).")
    if real_cp is None and generated_cp is None:
        return section("features", "Feature distributions: real vs generated", what, good,
                       missing("Not measured: no CellProfiler tables (results/morphology/*_image.parquet)."))
    available = [f for f in features if measured(real_cp, f) or measured(generated_cp, f)]
    absent = [f for f in features if f not in available]
    body = ""
    if available:
        groups = {"real": {}}
        if generated_cp is not None:
            groups.update({"generated, accepted": {}, "generated, abstained": {}})
        for feature in available:
            if measured(real_cp, feature):
                groups["real"][feature] = real_cp[feature].to_numpy(float)
            if generated_cp is not None and measured(generated_cp, feature):
                accepted = generated_cp["accepted"].fillna(False).astype(bool)
                groups["generated, accepted"][feature] = generated_cp.loc[accepted, feature].to_numpy(float)
                groups["generated, abstained"][feature] = generated_cp.loc[~accepted, feature].to_numpy(float)
        png = figures.feature_strips(groups, {f: feature_label(f) for f in available})
        body += img(png, "feature distributions, real vs generated")
        n_real = 0 if real_cp is None else len(real_cp)
        n_gen = 0 if generated_cp is None else len(generated_cp)
        body += (f'<p class="small">{n_real} real site(s) and {n_gen} generated image(s) measured by CellProfiler '
                 "(config morphology.max_sites_per_condition caps how many per condition).</p>")
    if absent:
        body += missing("Not measured: " + ", ".join(f"<code>{esc(f)}</code>" for f in absent) + ".")
    return section("features", "Feature distributions: real vs generated", what, good, body)


# --- trust -------------------------------------------------------------------------------------------------------

def acceptance_table(generated: pd.DataFrame) -> pd.DataFrame:
    groups = generated.groupby("Metadata_condition", sort=False)
    out = pd.DataFrame({
        "condition": list(groups.groups),
        "arm": groups["Metadata_arm"].first().to_numpy(),
        "generated": groups.size().to_numpy(),
        "accepted": groups["accepted"].apply(lambda s: int(s.fillna(False).astype(bool).sum())).to_numpy(),
    })
    out["acceptance"] = out["accepted"] / out["generated"]
    for column in ("T", "R", "F"):
        if column in generated.columns:
            out[f"mean {column}"] = groups[column].mean().to_numpy()
    order = {c: i for i, c in enumerate(_conditions_order(generated))}
    return out.sort_values("condition", key=lambda s: s.map(order)).reset_index(drop=True)


def trust_section(generated: pd.DataFrame | None, inputs: Inputs, scope: str, min_acceptance: float | None,
                  histogram: bool = False) -> str:
    what = (f"The trust score T of every generated image for {scope}, one row per condition (cell type : siRNA id; "
            "arm seen = the generator was trained on it, unseen = a new combination). T = R + F adds how unusual the "
            "image looks among real images (R) and how poorly it matches the requested cell type and siRNA (F); "
            "images at or left of the dashed threshold κ are accepted, the others abstained. Grey dots: real "
            "calibration sites of the condition scored the same way (κ is set on them, so most fall left of it).")
    good = ("generated dots mixed in with the grey real dots and mostly left of the line; a high acceptance rate. "
            "A condition whose images sit far right was not learned well: do not use its generated images.")
    if generated is None or "T" not in generated.columns or generated["T"].isna().all():
        return section("trust", "Trust scores and acceptance", what, good,
                       missing("Not available: no trust scores (results/trust/generated_scores.parquet)."))
    threshold = read_json_optional(inputs.threshold)
    kappa = None if threshold is None else threshold.get("threshold")
    real = read_table(inputs.real_scores, ("Metadata_condition", "T"), "results/trust/real_scores.parquet")
    if real is not None:
        real = real[real["Metadata_condition"].isin(generated["Metadata_condition"])]
    body = img(figures.trust_strips(generated, real, kappa), "trust scores per condition")
    if histogram and inputs.has("threshold") and (inputs.threshold.parent / "trust_histogram.png").is_file():
        body += "<h3>All generated images against real calibration sites</h3>"
        body += img((inputs.threshold.parent / "trust_histogram.png").read_bytes(), "trust histogram")
    accept = acceptance_table(generated)
    enough = set(accept.loc[accept["acceptance"] >= (min_acceptance or 0), "condition"])
    accept["acceptance"] = accept["acceptance"].map(percent)
    body += "<h3>Acceptance per condition</h3>" + table(
        accept, row_class=lambda row: "" if min_acceptance is None else "good" if row["condition"] in enough else "bad")
    if threshold is not None:
        body += (f'<p class="small">κ = {esc(fmt(kappa))}: the {esc(fmt(100 * threshold.get("quantile", np.nan)))}th '
                 f"percentile of T over {esc(fmt(threshold.get('n_calibration')))} real calibration sites "
                 f"(calibration source: {esc(threshold.get('calibration_source', '?'))}); green rows: at least "
                 f"{percent(min_acceptance)} accepted.</p>")
    if "Metadata_generator" in generated.columns and generated["Metadata_generator"].nunique() > 1:
        kinds = generated.groupby("Metadata_generator").agg(
            generated=("accepted", "size"), accepted=("accepted", lambda s: int(s.fillna(False).astype(bool).sum())))
        kinds["acceptance"] = (kinds["accepted"] / kinds["generated"]).map(percent)
        body += ("<h3>Acceptance by what made the images</h3>"
                 + table(kinds.reset_index().rename(columns={"Metadata_generator": "made by"})))
    return section("trust", "Trust scores and acceptance", what, good, body)


# --- galleries ---------------------------------------------------------------------------------------------------

def _thumb(png: bytes, caption: str) -> str:
    return f'<figure class="thumb">{img(png, caption, "thumb")}<figcaption>{esc(caption)}</figcaption></figure>'


def _pick(frame: pd.DataFrame, n: int, rng: np.random.Generator, sort_by: str) -> pd.DataFrame:
    if len(frame) > n:
        frame = frame.iloc[np.sort(rng.choice(len(frame), size=n, replace=False))]
    return frame.sort_values(sort_by)


def gallery_section(real: pd.DataFrame | None, generated: pd.DataFrame | None, inputs: Inputs, gallery: dict,
                    seed: int, scope: str, real_words: str, plate_in_caption: bool = True) -> str:
    what = (f"Generated images the trust score accepted (green) and abstained on (orange), next to {real_words} of "
            f"the same condition (blue), for {scope}. Under each generated image: its trust score T (lower = more "
            "trustworthy). Images are picked at random (seeded) within each group.")
    good = ("accepted images look like the real sites of their condition (cell size, density, where each stain sits); "
            "abstained ones show what went wrong: blur, wrong brightness, the wrong phenotype.")
    if generated is None and real is None:
        return section("gallery", "Galleries", what, good, missing("Not available: no sites."))
    rng = np.random.default_rng(seed)
    cache = {}
    frames = pd.concat([f[["Metadata_condition", "Metadata_arm"]] for f in (generated, real) if f is not None])
    arms = frames.drop_duplicates("Metadata_condition").set_index("Metadata_condition")["Metadata_arm"]
    conditions = _conditions_order(frames)
    if generated is not None:
        conditions = [c for c in conditions if c in set(generated["Metadata_condition"])]
    shown = conditions[: gallery["max_conditions"]]
    several_makers = generated is not None and "Metadata_generator" in generated.columns \
        and generated["Metadata_generator"].nunique() > 1
    blocks = []
    for condition in shown:
        groups = []
        if real is not None and inputs.stacks_dir is not None:
            rows = _pick(real[real["Metadata_condition"] == condition], gallery["real"], rng, "Metadata_site_id")
            thumbs = [_thumb(figures.thumbnail_png(stack_image(inputs.stacks_dir, r.Metadata_split,
                                                               r.Metadata_stack_index, cache)),
                             f"{r.Metadata_well} s{r.Metadata_site}"
                             + (f" · {r.Metadata_experiment} P{r.Metadata_plate}" if plate_in_caption else ""))
                      for r in rows.itertuples()]
            groups.append(("real", f"real ({len(thumbs)} shown)", thumbs))
        if generated is not None:
            rows = generated[generated["Metadata_condition"] == condition]
            accepted = rows["accepted"].fillna(False).astype(bool)
            for name, chosen in (("accepted", accepted), ("abstained", ~accepted)):
                picked = _pick(rows[chosen], gallery[name], rng, "T")
                thumbs = []
                for r in picked.itertuples():
                    try:
                        image = read_site(r.Metadata_image_path)
                    except (OSError, ValueError) as error:
                        raise InputError(f"cannot read generated image {r.Metadata_image_path} ({error})",
                                         file=inputs.generated, where=f"sample {r.Metadata_sample_id}") from None
                    caption = f"T {fmt(r.T)}"
                    if several_makers:
                        caption += f" · {str(r.Metadata_generator).removeprefix('standin:')}"
                    thumbs.append(_thumb(figures.thumbnail_png(image), caption))
                groups.append((name, f"generated, {name} ({int(chosen.sum())}, {len(thumbs)} shown)", thumbs))
        inner = "".join(f'<div class="group {kind}"><h4>{esc(title)}</h4><div class="thumbs">'
                        + ("".join(thumbs) or '<span class="small">none</span>') + "</div></div>"
                        for kind, title, thumbs in groups)
        blocks.append(f"<h3>{esc(condition)} <span class='small'>({esc(arms[condition])} arm)</span></h3>"
                      f'<div class="gallery">{inner}</div>')
    body = composite_legend() + "".join(blocks)
    if len(conditions) > len(shown):
        body += note(f"{len(conditions) - len(shown)} more condition(s) not shown (config "
                     "report.gallery.max_conditions).")
    return section("gallery", "Galleries: accepted and abstained generated images next to real sites", what, good,
                   body)


# --- validation --------------------------------------------------------------------------------------------------

def validation_section(conditions: list[str], inputs: Inputs, scope: str, figures_too: bool = False) -> str:
    what = (f"Checks of the trust score against real cells, which the score never saw, for {scope}. "
            "Centroid distance z: how far a generated image's CellProfiler profile lies from the average real site "
            "of its condition, in units of how far real sites lie from each other (0 = as close as a typical real "
            "site). ΔKID: how much more the generated images differ from real ones than two halves of the real "
            "sites differ from each other (encoder features; 0 = indistinguishable). Rank: among all real "
            "conditions, how close the generated images are to their own (1 = closest). mAP: mean average precision "
            "of the generated images retrieving real sites of their own condition among all real sites (copairs; "
            "1 = own-condition sites always first).")
    good = ("accepted images have z near 0 and lower than a random pick of the same size; ΔKID of accepted "
            "lower than random; rank 1; mAP well above chance. In the curve, the line rises from left (most trusted) to right.")
    per_sample = validation_table(inputs, "centroid_per_sample.csv", ("condition", "T", "z"))
    centroid = validation_table(inputs, "centroid_per_condition.csv", ("condition", "arm"))
    kid = validation_table(inputs, "kid_per_condition.csv", ("condition", "arm"))
    ranks = validation_table(inputs, "discrimination_encoder.csv", ("condition", "rank_energy"))
    retrieval = validation_table(inputs, "map_encoder.csv", ("condition", "mean_average_precision"))
    body = ""
    if per_sample is not None:
        chosen = per_sample[per_sample["condition"].isin(conditions)]
        if len(chosen) and np.isfinite(chosen["z"].to_numpy(float)).any():
            body += "<h3>Centroid distance by trust rank</h3>" + img(figures.trust_rank_curve(chosen),
                                                                     "centroid distance by trust rank")
    rows = pd.DataFrame({"condition": conditions})
    for frame, columns in ((centroid, {"arm": "arm", "mean_z_accepted": "z accepted", "mean_z_random": "z random"}),
                           (kid, {"arm": "arm", "delta_kid": "ΔKID all", "delta_kid_accepted": "ΔKID accepted",
                                  "delta_kid_random": "ΔKID random"}),
                           (ranks, {"rank_energy": "rank (encoder)", "n_candidates": "of"}),
                           (retrieval, {"mean_average_precision": "mAP (encoder)"})):
        if frame is None:
            continue
        keep = {k: v for k, v in columns.items() if k in frame.columns and v not in rows.columns}
        rows = rows.merge(frame[["condition", *keep]].rename(columns=keep), on="condition", how="left")
    flags = []
    for frame, name in ((centroid, "centroid distance"), (kid, "KID")):
        if frame is not None and "flag" in frame.columns:
            flagged = frame["condition"].isin(conditions) & frame["flag"].notna() & (frame["flag"].astype(str) != "")
            flags += [{"condition": row.condition, "analysis": name, "flag": row.flag}
                      for row in frame[flagged].itertuples()]
    if rows.shape[1] > 1:
        known = rows.drop(columns="condition").notna().any(axis=1)
        if known.any():
            body += "<h3>Per condition</h3>" + table(rows[known])
        if not known.all():
            body += note("No validation numbers for: " + esc(", ".join(rows.loc[~known, "condition"])) + ".")
    if flags:
        body += (f"<details><summary>{len(flags)} caution(s) from the validation (small conditions give noisy "
                 f"numbers): click to show</summary>{table(pd.DataFrame(flags))}</details>")
    if figures_too and inputs.validation_dir is not None:
        for name, title in (("centroid.png", "Centroid distance: trust-accepted vs random picks"),
                            ("deciles_cp.png", "Decile classifiers (CellProfiler features)"),
                            ("deciles_encoder.png", "Decile classifiers (encoder features)"),
                            ("kid_deciles.png", "ΔKID per trust decile")):
            path = inputs.validation_dir / name
            if path.is_file():
                body += f"<h3>{esc(title)}</h3>" + img(path.read_bytes(), title)
    if not body:
        body = missing("Not computed for these conditions (no results/validation/ tables for them).")
    return section("validation", "Validation against real cells", what, good, body)


# --- image quality -----------------------------------------------------------------------------------------------

def qc_rules_text(qc: dict) -> str:
    rules = []
    if qc["blur_drop"] is not None:
        rules.append(f"<b>blurred</b>: focus more than {qc['blur_drop']:g} below the median of real sites of the "
                     "same cell type")
    if qc["blur_min_slope"] is not None:
        rules.append(f"<b>blurred</b>: focus below {qc['blur_min_slope']:g}")
    rules.append(f"<b>saturated</b>: more than {qc['saturation_max_percent']:g}% of pixels at the maximum")
    rules.append(f"<b>sparse</b>: fewer than {qc['min_nuclei']:g} nuclei per site (a well: on average)")
    return "Rules (config report.qc): " + "; ".join(rules) + "."


def quality_panel(groups: dict[str, pd.DataFrame], reference: pd.DataFrame | None, qc: dict, flags: pd.DataFrame,
                  absent: list[str], where_column: str, noun: str = "site") -> str:
    """The focus/saturation figure, the rules and the table of flagged sites (`flags` has a `where_column`)."""
    from ..morphology.sites import STAIN_NAMES

    body = ""
    present = {k: v for k, v in groups.items() if v is not None and len(v)}
    if present:
        body += img(figures.qc_strips(present, reference, qc, STAIN_NAMES), "focus and saturation per stain")
    body += f'<p class="small">{qc_rules_text(qc)}</p>'
    if present and qc["blur_drop"] is not None and reference is None and qc["blur_min_slope"] is None:
        body += note("The relative blur rule needs real sites measured by CellProfiler: not applied.")
    if absent:
        body += missing("Not measured: " + ", ".join(f"<code>{esc(c)}</code>" for c in absent) + ".")
    if present and flags.empty:
        body += f"<p><b>No {noun} broke a rule.</b></p>"
    elif present:
        body += (f"<h3>Flagged: {flags['id'].nunique()} {noun}(s), {len(flags)} finding(s)</h3>"
                 + table(_grouped_flags(flags, where_column), row_class=lambda row: "bad", limit=60,
                         more="; every finding is in results/report/qc_flags.csv"))
    return body


def _grouped_flags(flags: pd.DataFrame, where_column: str) -> pd.DataFrame:
    """One row per flagged site and problem, its stains and values side by side."""
    rows = []
    for (site, where, problem), group in flags.groupby(["id", where_column, "problem"], sort=True, dropna=False):
        more = f"; the same rule in {len(group) - 1} more stain(s)" if len(group) > 1 else ""
        rows.append({"id": site, where_column: where, "problem": problem, "stains": ", ".join(group["stain"]),
                     "values": ", ".join(fmt(v) for v in group["value"]), "rule": group["rule"].iloc[0] + more})
    return pd.DataFrame(rows)
