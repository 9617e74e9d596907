"""QC report of one real plate: `results/report/plates/{experiment}_Plate{plate}.html`."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from ..data import SYNTHETIC_LABEL
from ..errors import InputError
from ..io import atomic_path, write_text
from ..morphology.fields import PLATE
from . import figures
from .config import report_settings
from .html import facts, img, missing, note, page, section, table
from .inputs import (MANIFEST_COLUMNS, SITES_COLUMNS, Inputs, generated_banners, generated_measurements, is_synthetic,
                     on_plate, qc_measurements, read_required, read_table, real_measurements,
                     scored_generated)
from .qc import FAILED, all_flags, focus_reference, not_measured, well_summary
from .sections import features_section, gallery_section, quality_panel, trust_section, validation_section

SKIPPED_COLUMNS = ("experiment", "plate", "site_id", "file", "problem")
STUDIED_ARMS = ("seen", "unseen")
WELL_COLUMNS = {"Metadata_well": "well", "sites_measured": "sites measured", "mean_nuclei": "nuclei per site (mean)",
                "sparse": "sparse", "sites_blurred": "blurred sites", "sites_saturated": "saturated sites",
                "sites_failed_segmentation": "sites that failed segmentation"}


def plates_with_conditions(metadata: pd.DataFrame, conditions: pd.DataFrame) -> dict[str, list]:
    """The plates (RxRx1 metadata, official column names) holding a site of a listed condition.

    `{"experiment": [...], "plate": [...]}` in metadata order, for `expand(..., zip, **plates)` at DAG time.
    """
    pairs = conditions[["cell_type", "sirna_id"]].astype({"sirna_id": int})
    table = metadata[["experiment", "plate", "cell_type", "sirna_id"]].astype({"sirna_id": int, "plate": int})
    plates = table.merge(pairs, on=["cell_type", "sirna_id"])[["experiment", "plate"]].drop_duplicates()
    order = table[["experiment", "plate"]].drop_duplicates().reset_index(drop=True).reset_index()
    plates = plates.merge(order, on=["experiment", "plate"]).sort_values("index")
    return {"experiment": plates["experiment"].tolist(), "plate": [int(p) for p in plates["plate"]]}


def plate_file_name(experiment: str, plate: int) -> str:
    return f"{experiment}_Plate{int(plate)}.html"


def _well_of_skipped(row) -> str | None:
    """The well of a data-QC row: from its site id (`HUVEC-01_1_B02_1`) or its file name (`B02_s1_w1.png`)."""
    site_id, file = row.get("site_id"), row.get("file")
    match = re.search(r"_([A-P]\d{2})_\d+$", site_id) if isinstance(site_id, str) else None
    if match is None and isinstance(file, str):
        match = re.match(r"([A-P]\d{2})_s\d+", Path(file).name)
    return match.group(1) if match else None


def plate_skipped(inputs: Inputs, experiment: str, plate: int) -> pd.DataFrame:
    skipped = read_table(inputs.qc_skipped, SKIPPED_COLUMNS, "results/data/qc_skipped.csv (docs/design.md)")
    if skipped is None or skipped.empty:
        return pd.DataFrame(columns=[*SKIPPED_COLUMNS, "well"])
    mine = skipped[(skipped["experiment"].astype(str) == experiment)
                   & (pd.to_numeric(skipped["plate"], errors="coerce") == int(plate))].copy()
    mine["well"] = [_well_of_skipped(row) for row in mine.to_dict("records")]
    return mine


def well_roles(sites: pd.DataFrame, manifest: pd.DataFrame, skipped: pd.DataFrame) -> pd.Series:
    """Well name -> what it holds (figures.ROLE_COLOURS); the study's role wins over "ingested, not studied"."""
    roles = {}
    for well in skipped["well"].dropna():
        roles[well] = "skipped at ingest (data QC)"
    for well in sites["Metadata_well"].astype(str):
        roles[well] = "ingested, not studied"
    names = {"seen": "studied, seen arm", "unseen": "studied, unseen arm", "control": "same-plate control"}
    ranked = manifest.assign(rank=manifest["Metadata_arm"].map({"control": 0, "unseen": 1, "seen": 2}).fillna(-1))
    for row in ranked.sort_values("rank").itertuples():
        if row.Metadata_arm in names:
            roles[str(row.Metadata_well)] = names[row.Metadata_arm]
    return pd.Series(roles, dtype=object).sort_index()


def build_plate_report(experiment: str, plate: int, inputs: Inputs, cfg: dict | None = None) -> tuple[str, bytes]:
    """(HTML text, plate-map PNG) of one real plate."""
    cfg = report_settings(cfg)
    plate = int(plate)
    title = f"{experiment} Plate {plate}"
    manifest = read_required(inputs.manifest, MANIFEST_COLUMNS, "results/subsets/manifest.parquet (docs/design.md)")
    sites = read_table(inputs.sites, SITES_COLUMNS, "results/data/sites.parquet (docs/design.md)")
    plate_manifest = on_plate(manifest, experiment, plate)
    plate_sites = plate_manifest if sites is None else on_plate(sites, experiment, plate)
    if plate_sites.empty and plate_manifest.empty:
        raise InputError(f"no site of plate {title} in the sites table or the subset manifest",
                         file=inputs.sites or inputs.manifest, expected="a plate that was ingested")
    skipped = plate_skipped(inputs, experiment, plate)

    real_cp = real_measurements(inputs, cfg["features"])
    plate_cp = on_plate(real_cp, experiment, plate, PLATE)
    # image quality, nuclei and the segmentation gate: the QC pass of every ingested site when it ran
    all_qc_cp = qc_measurements(inputs)
    qc_cp = on_plate(all_qc_cp, experiment, plate, PLATE)
    qc = cfg["qc"]
    reference = focus_reference(all_qc_cp)
    flags = all_flags(qc_cp, reference, qc, "Metadata_site_id")
    wells = well_summary(qc_cp, flags, qc)
    failed = flags[flags["problem"] == FAILED]
    roles = well_roles(plate_sites, plate_manifest, skipped)
    map_png = figures.plate_maps(roles, wells, title)

    studied = plate_manifest[plate_manifest["Metadata_arm"].isin(STUDIED_ARMS)]
    conditions = sorted(studied["Metadata_condition"].astype(str).unique())
    generated = scored_generated(inputs)
    plate_generated = None if generated is None else \
        generated[generated["Metadata_condition"].isin(conditions)].reset_index(drop=True)
    synthetic = is_synthetic(plate_sites, plate_manifest, sites)
    banners = [("synthetic", SYNTHETIC_LABEL)] if synthetic else []
    banners += generated_banners(generated)

    # --- overview
    cell_types = ", ".join(sorted(plate_sites["Metadata_cell_type"].astype(str).unique()))
    arms = plate_manifest["Metadata_arm"].value_counts()
    overview = facts([
        ("experiment / plate", title),
        ("cell type", cell_types or "–"),
        ("wells with an ingested site", plate_sites["Metadata_well"].nunique()),
        ("sites ingested", len(plate_sites)),
        ("problems found at ingest (data QC; those sites skipped)", len(skipped)),
        ("sites in the study subset", ", ".join(f"{n} {a}" for a, n in arms.items()) or "none"),
        ("sites measured by the CellProfiler QC pass", "not measured" if qc_cp is None else len(qc_cp)),
        ("sites that failed nuclei segmentation (left out of validation)",
         "not checked" if qc_cp is None else failed["id"].nunique()),
        ("sites measured by the full CellProfiler pipeline", "not measured" if plate_cp is None else len(plate_cp)),
        ("studied conditions on this plate", ", ".join(conditions) or "none"),
        ("generated images of these conditions", 0 if plate_generated is None else len(plate_generated)),
    ])
    intro = section("overview", "Overview",
                    "One plate of the experiment: which wells were used, how the images look, and how the generated "
                    "images of the conditions on this plate compare with the real sites. Each panel says what it "
                    "shows and what a good result looks like.", None, overview
                    + ("" if conditions else note("None of this plate's sites belong to a studied condition: the "
                                                  "trust, gallery and validation panels are empty.")))

    # --- plate map and QC
    map_body = img(map_png, f"{title} plate map")
    sparse = wells[wells["sparse"]]
    if len(sparse):
        map_body += "<h3>Sparse or empty wells</h3>" + table(sparse.rename(columns=WELL_COLUMNS),
                                                              row_class=lambda row: "bad")
    if len(failed):
        map_body += ("<h3>Sites where nuclei segmentation failed</h3>"
                     + table(failed[["id", "well", "value", "rule"]].rename(columns={"id": "site", "value": "nuclei"}),
                             row_class=lambda row: "bad", limit=60))
    if qc_cp is None:
        map_body += missing("Not measured: no CellProfiler QC table for the real sites "
                            "(results/morphology/qc_image.parquet).")
    plate_map = section(
        "plate-map", "Plate map: cells per well",
        "The 384-well plate (rows A-P, columns 1-24). Top: average number of nuclei per site that CellProfiler found "
        "in each well by the light QC pass, which measures every ingested site (grey wells: not measured). "
        "Bottom: what each well holds in this study.",
        "similar counts across wells of the same kind; no red (sparse / empty) or orange (blurred or saturated) "
        "outlines; no red wells in the bottom map (images missing or unreadable); no site where nuclei "
        "segmentation failed.", map_body)

    quality_body = quality_panel({"real sites on this plate": qc_cp}, reference, qc,
                                 flags[~flags["problem"].isin(["sparse", FAILED])], not_measured(qc_cp), "well")
    if len(skipped):
        quality_body += "<h3>Sites skipped at ingest (data QC)</h3>" + table(
            skipped[["site_id", "well", "problem", "file"] + (["detail"] if "detail" in skipped else [])],
            row_class=lambda row: "bad")
    quality = section("quality", "Image quality: focus and saturation per stain",
                      "Image quality of every site of this plate that CellProfiler measured, per stain: focus (how "
                      "sharp; blur lowers it) and saturation (pixels stuck at the brightest value). Red crosses broke "
                      "a rule; the table lists each flagged site, the stain, the value and the rule that flagged it. "
                      "Sites that could not be read at all are listed under data QC.",
                      "all dots above the red dashed blur line and below the saturation line; no flagged sites.",
                      quality_body)

    conditions_real_cp = None if plate_cp is None else plate_cp[plate_cp["Metadata_condition"].isin(conditions)]
    generated_cp = generated_measurements(inputs, conditions, cfg["features"])
    scope = f"the studied conditions on {title}"
    body = "".join([
        intro, plate_map, quality,
        features_section(conditions_real_cp, generated_cp, cfg["features"], scope),
        trust_section(plate_generated, inputs, scope, cfg["verdict"]["min_acceptance"]),
        gallery_section(studied, plate_generated if plate_generated is not None and len(plate_generated) else None,
                        inputs, cfg["gallery"], cfg["seed"], scope, "real sites from this plate",
                        plate_in_caption=False),
        validation_section(conditions, inputs, scope),
    ])
    nav = [("overview", "Overview"), ("plate-map", "Plate map"), ("quality", "Image quality"),
           ("features", "Features"), ("trust", "Trust"), ("gallery", "Galleries"), ("validation", "Validation")]
    document = page(f"Plate QC: {title}", f"morphotrust plate report · cell type {cell_types}", banners, nav, body)
    return document, map_png


def write_plate_report(experiment: str, plate: int, inputs: Inputs, cfg, out_html, out_map=None) -> None:
    document, map_png = build_plate_report(experiment, plate, inputs, cfg)
    write_text(document, out_html)
    if out_map is not None:
        with atomic_path(out_map) as tmp:
            Path(tmp).write_bytes(map_png)
