"""QC report of the generated set, laid out like a plate report but per condition: `results/report/generated.html`."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..data import SYNTHETIC_LABEL
from ..errors import InputError
from ..io import atomic_path, write_text
from . import figures
from .config import report_settings
from .html import esc, facts, img, missing, page, percent, section, table
from .inputs import (MANIFEST_COLUMNS, Inputs, generated_banners, generated_measurements, is_synthetic, read_table,
                     real_measurements, scored_generated)
from .qc import COUNT, all_flags, focus_reference, measured, not_measured
from .sections import features_section, gallery_section, quality_panel, trust_section, validation_section


def build_generated_report(inputs: Inputs, cfg: dict | None = None,
                           source: str | None = None) -> tuple[str, bytes | None]:
    """(HTML text, condition-map PNG or None when nothing was measured) of the generated set."""
    cfg = report_settings(cfg)
    generated = scored_generated(inputs)
    if generated is None:
        raise InputError("generated manifest not found", file=inputs.generated,
                         expected="results/generated/{source}/manifest.parquet")
    manifest = read_table(inputs.manifest, MANIFEST_COLUMNS, "results/subsets/manifest.parquet (docs/design.md)")
    real_cp = real_measurements(inputs, cfg["features"])
    generated_cp = generated_measurements(inputs, None, cfg["features"])
    qc = cfg["qc"]
    reference = focus_reference(real_cp)
    flags = all_flags(generated_cp, reference, qc, "Metadata_sample_id")

    synthetic = is_synthetic(manifest, real_cp)
    banners = [("synthetic", SYNTHETIC_LABEL)] if synthetic else []
    banners += generated_banners(generated)
    makers = ", ".join(sorted(generated["Metadata_generator"].astype(str).unique())) \
        if "Metadata_generator" in generated.columns else "not recorded"
    arms = generated.drop_duplicates("Metadata_condition")["Metadata_arm"].value_counts()
    accepted = generated["accepted"].fillna(False).astype(bool)
    overview = facts([
        ("generated set", source or str(inputs.generated)),
        ("made by", makers),
        ("generated images", len(generated)),
        ("conditions", ", ".join(f"{n} {a}" for a, n in arms.items())),
        ("accepted by the trust score", f"{int(accepted.sum())} ({percent(accepted.mean())})"
         if generated["T"].notna().any() else "not scored"),
        ("measured by CellProfiler", "not measured" if generated_cp is None else len(generated_cp)),
    ])
    intro = section("overview", "Overview",
                    "The generated images as a whole, laid out like a plate report but per condition (cell type : "
                    "siRNA id) instead of per well. Each panel says what it shows and what a good result looks like.",
                    None, overview)

    map_png = None
    if measured(real_cp, COUNT) or measured(generated_cp, COUNT):
        map_png = figures.condition_maps(real_cp if measured(real_cp, COUNT) else None,
                                         generated_cp if measured(generated_cp, COUNT) else None,
                                         COUNT, "nuclei per site (mean)")
        map_body = img(map_png, "nuclei per site per condition, real vs generated")
        counts = _count_table(real_cp, generated_cp, qc["min_nuclei"])
        if counts is not None:
            map_body += table(counts, row_class=lambda row: "bad" if row["generated: sparse"] else "")
    else:
        map_body = missing(f"Not measured: no {COUNT} in the CellProfiler tables (results/morphology/).")
    condition_map = section(
        "condition-map", "Condition map: cells per site",
        "Average number of nuclei per site that CellProfiler found, per cell type (rows) and siRNA (columns), for real "
        "sites (left) and generated images (right) on one colour scale. A dash: no measured site.",
        "the two maps look alike: generated images hold as many cells as real sites of the same condition; no "
        "condition of generated images is sparse or empty.", map_body)

    quality = section("quality", "Image quality: focus and saturation per stain",
                      "Image quality of every generated image (orange) that CellProfiler measured, against the real "
                      "sites (blue), per stain: focus (how sharp; blur lowers it) and saturation (pixels stuck at the "
                      "brightest value). Red crosses broke a rule; the table lists each flagged image, its "
                      "condition, the stain, the value and the rule that flagged it.",
                      "generated dots spread like the real ones, above the blur line and below the saturation line.",
                      quality_panel({"real": real_cp, "generated": generated_cp}, reference, qc, flags,
                                    not_measured(generated_cp), "condition", noun="image"))
    scope = "all generated conditions"
    conditions = sorted(generated["Metadata_condition"].astype(str).unique())
    body = "".join([
        intro, condition_map, quality,
        features_section(None if real_cp is None else real_cp[real_cp["Metadata_condition"].isin(conditions)],
                         generated_cp, cfg["features"], scope),
        trust_section(generated, inputs, scope, cfg["verdict"]["min_acceptance"], histogram=True),
        gallery_section(None if manifest is None else manifest[manifest["Metadata_arm"].isin(("seen", "unseen"))],
                        generated, inputs, cfg["gallery"], cfg["seed"], scope, "real sites (any plate)"),
        validation_section(conditions, inputs, scope, figures_too=True),
    ])
    nav = [("overview", "Overview"), ("condition-map", "Condition map"), ("quality", "Image quality"),
           ("features", "Features"), ("trust", "Trust"), ("gallery", "Galleries"), ("validation", "Validation")]
    document = page("Generated images: QC", f"morphotrust generated-set report · {esc(makers)}", banners, nav, body)
    return document, map_png


def _count_table(real_cp, generated_cp, min_nuclei: float) -> pd.DataFrame | None:
    """Per generated condition: measured sites and mean nuclei per site, real and generated; sparse flag."""
    parts = {}
    for name, frame in (("real", real_cp), ("generated", generated_cp)):
        if measured(frame, COUNT):
            parts[f"{name}: sites"] = frame.groupby("Metadata_condition")[COUNT].size()
            parts[f"{name}: nuclei per site"] = frame.groupby("Metadata_condition")[COUNT].mean()
    if "generated: sites" not in parts:
        return None
    counts = pd.DataFrame(parts).reindex(sorted(generated_cp["Metadata_condition"].unique()))
    counts["generated: sparse"] = counts["generated: nuclei per site"] < min_nuclei
    return counts.rename_axis("condition").reset_index()


def write_generated_report(inputs: Inputs, cfg, out_html, out_map=None, source: str | None = None) -> None:
    document, map_png = build_generated_report(inputs, cfg, source)
    write_text(document, out_html)
    if out_map is not None:
        with atomic_path(out_map) as tmp:
            if map_png is None:
                map_png = _placeholder_png("Not measured: no CellProfiler counts")
            Path(tmp).write_bytes(map_png)


def _placeholder_png(text: str) -> bytes:
    plt = figures._plt()
    fig, ax = plt.subplots(figsize=(6, 1.2))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center")
    return figures.to_png(fig)
