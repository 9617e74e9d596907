"""Ingest: one plate of an RxRx1 folder -> canonical `(6, H, W)` TIFF per site + a sites table + a QC table.

Every problem is reported by name: missing channel files, unreadable or wrong-shaped images, metadata rows
without images and image files without a metadata row. With `on_bad_site="stop"` the plate stops with one
message listing them all; with `"skip"` the bad sites are left out and every problem is recorded in the QC
table (action `skipped`), so nothing disappears silently.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError, InputErrors
from ..images import write_site
from ..io import write_csv, write_parquet
from .rxrx1 import (IMAGE_SUFFIXES, METADATA_COLUMNS, SiteProblem, plate_folder, png_header, png_paths,
                    read_metadata, read_png, read_tiff, resolve_layout, scan_plate, tiff_header)

ON_BAD_SITE = ("stop", "skip")
# A folder holding this file is the synthetic demo (morphotrust.data.demo writes it).
DEMO_MARKER = "SYNTHETIC_DATA_README.txt"
SITES_COLUMNS = [f"Metadata_{c}" for c in METADATA_COLUMNS] + [
    "Metadata_image_path", "Metadata_height", "Metadata_width", "Metadata_synthetic"]
QC_COLUMNS = ["experiment", "plate", "site_id", "metadata_line", "file", "problem", "detail", "action"]
PROBLEMS = {
    "missing_channel": "a channel file of the site is missing",
    "no_images": "a metadata row without any image file",
    "unreadable": "an image file that cannot be read",
    "wrong_shape": "an image of the wrong shape or pixel type",
    "no_metadata": "an image file (or folder) without a metadata row",
}


def ingest_plate(root, experiment: str, plate: int, *, sites_dir, table_path, qc_path, layout: str = "auto",
                 on_bad_site: str = "stop", progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Convert every site of one plate to `{sites_dir}/{site_id}.tif` and write the plate's sites and QC
    tables. Reads `{root}/metadata.csv` and `{root}/images/{experiment}/Plate{plate}/`. Returns both tables."""
    from tqdm import tqdm

    if on_bad_site not in ON_BAD_SITE:
        raise InputError(f"unknown value {on_bad_site!r}", where="config data.on_bad_site",
                         expected=" or ".join(ON_BAD_SITE))
    root, plate, sites_dir = Path(root), int(plate), Path(sites_dir)
    metadata_path = root / "metadata.csv"
    metadata = read_metadata(metadata_path)
    rows = metadata[(metadata["experiment"] == experiment) & (metadata["plate"] == plate)]
    if rows.empty:
        raise InputError(f"no row for experiment {experiment!r} plate {plate}", file=metadata_path)
    folder = plate_folder(root, experiment, plate)
    files = scan_plate(folder)
    layout = resolve_layout(layout, files)
    synthetic = (root / DEMO_MARKER).exists()
    problems: list[dict] = []

    def record(row, line, problem: SiteProblem):
        problems.append({"site_id": row.site_id if row is not None else "", "metadata_line": line,
                         "file": str(problem.file), "problem": problem.problem, "detail": problem.detail})

    # Pass 1: which files each site needs, and their headers (cheap), to find the plate's usual shape.
    site_files, shapes = {}, {}
    used = set()
    for line, row in zip(rows.index, rows.itertuples(index=False)):
        paths = _site_paths(files, layout, row.well, row.site)
        used.update(paths)
        present = [p for p in paths if p.is_file()]
        if not present:
            expected = paths[0] if layout == "tiff" else folder / f"{row.well}_s{row.site}_w[1-6].png"
            where = "" if files.exists else f"; the plate folder {folder} does not exist"
            record(row, line, SiteProblem("no_images", expected, f"no image file for this metadata row{where}"))
            continue
        if layout == "tiff" and len(present) > 1:
            record(row, line, SiteProblem("unreadable", present[0],
                                          f"two TIFFs for one site: {', '.join(p.name for p in present)}"))
            continue
        missing = [p for p in paths if p not in present] if layout == "png" else []
        for path in missing:
            record(row, line, SiteProblem("missing_channel", path, f"channel file missing "
                                          f"(expected all six w1..w6 for site {row.site_id})"))
        if missing:
            continue
        try:
            headers = [png_header(p) for p in present] if layout == "png" else [tiff_header(present[0])]
        except SiteProblem as problem:
            record(row, line, problem)
            continue
        if len(set(headers)) > 1:  # channels disagree: blame those unlike the site's majority
            (usual_shape, usual_type), _ = Counter(headers).most_common(1)[0]
            for path, (shape, dtype) in zip(present, headers):
                if (shape, dtype) != (usual_shape, usual_type):
                    record(row, line, SiteProblem("wrong_shape", path, f"is {_size(shape)} {dtype} while the "
                                                  f"site's other channels are {_size(usual_shape)} {usual_type}"))
            continue
        site_files[row.site_id] = present
        shapes[row.site_id] = headers[0][0]

    usual = Counter(shapes.values()).most_common(1)[0][0] if shapes else None
    for line, row in zip(rows.index, rows.itertuples(index=False)):
        if row.site_id in shapes and shapes[row.site_id] != usual:
            record(row, line, SiteProblem("wrong_shape", site_files.pop(row.site_id)[0],
                                          f"is {_size(shapes[row.site_id])} while most sites of this plate are "
                                          f"{_size(usual)}"))

    for path in _unused_images(files, used):
        record(None, pd.NA, SiteProblem("no_metadata", path, f"image file without a row in {metadata_path} "
                                        f"(experiment {experiment}, plate {plate})"))

    # Pass 2: read, convert and write. Once a problem is known in stop mode nothing more is written, but
    # every site is still read so that the one error message lists every unreadable file.
    records = []
    todo = [(line, row) for line, row in zip(rows.index, rows.itertuples(index=False)) if row.site_id in site_files]
    for line, row in tqdm(todo, desc=f"ingest {experiment}/Plate{plate}", disable=not progress, mininterval=5):
        paths = site_files[row.site_id]
        try:
            image = np.stack([read_png(p) for p in paths]) if layout == "png" else read_tiff(paths[0])
        except SiteProblem as problem:
            record(row, line, problem)
            continue
        if problems and on_bad_site == "stop":
            continue
        image_path = sites_dir / f"{row.site_id}.tif"
        write_site(image_path, image)
        records.append([getattr(row, c) for c in METADATA_COLUMNS]
                       + [str(image_path), image.shape[1], image.shape[2], synthetic])

    qc = pd.DataFrame(problems, columns=QC_COLUMNS[2:7])
    qc.insert(0, "plate", plate)
    qc.insert(0, "experiment", experiment)
    qc["metadata_line"] = qc["metadata_line"].astype("Int64")
    qc["action"] = "skipped"
    if problems and on_bad_site == "stop":
        raise InputErrors(
            f"plate {experiment}/Plate{plate} of {root} has bad or missing images; fix them, or set "
            "data.on_bad_site: skip to leave these sites out (each is then recorded in "
            "results/data/qc_skipped.csv)", [_describe(p) for p in problems], limit=len(problems))
    sites = _sites_table(records)
    sites_dir.mkdir(parents=True, exist_ok=True)
    write_csv(qc, qc_path)
    write_parquet(sites, table_path)
    return sites, qc


def merge(tables, qc_tables, *, sites_path, qc_path, root=None, on_bad_site: str = "stop") -> pd.DataFrame:
    """Concatenate the per-plate sites and QC tables. With `root`, also report image folders under
    `{root}/images` that belong to no experiment/plate of the metadata."""
    sites = pd.concat([pd.read_parquet(t) for t in tables] or [_sites_table([])], ignore_index=True)
    sites = _sites_table(sites.sort_values(["Metadata_experiment", "Metadata_plate", "Metadata_well",
                                            "Metadata_site"], kind="stable").values.tolist())
    qc_parts = [pd.read_csv(t, dtype={"site_id": str, "file": str, "detail": str}, keep_default_na=False,
                            na_values={"metadata_line": [""]}) for t in qc_tables]
    qc = pd.concat(qc_parts, ignore_index=True) if qc_parts else pd.DataFrame(columns=QC_COLUMNS)
    qc = qc.reindex(columns=QC_COLUMNS)
    if root is not None:
        orphans = unplanned_images(root)
        if orphans and on_bad_site == "stop":
            raise InputErrors(f"image folders in {Path(root) / 'images'} that no row of metadata.csv refers to; "
                              "remove them or set data.on_bad_site: skip",
                              [_describe(p) for p in orphans], limit=len(orphans))
        if orphans:
            extra = pd.DataFrame(orphans).assign(action="skipped")
            qc = pd.concat([qc, extra], ignore_index=True).reindex(columns=QC_COLUMNS)
    for column in ("plate", "metadata_line"):
        qc[column] = pd.to_numeric(qc[column]).astype("Int64")
    if sites.empty:
        raise InputError("no site could be ingested: every site was skipped (see the plates' QC tables "
                         f"{', '.join(map(str, qc_tables[:3]))}{' ...' if len(qc_tables) > 3 else ''})")
    write_csv(qc, qc_path)
    write_parquet(sites, sites_path)
    return sites


def unplanned_images(root) -> list[dict]:
    """Image folders (or stray image files) under `{root}/images` with no metadata row for their plate."""
    root = Path(root)
    metadata = read_metadata(root / "metadata.csv")
    planned = set(zip(metadata["experiment"], metadata["plate"].map(lambda p: f"Plate{p}")))
    experiments = {e for e, _ in planned}
    found = []
    images = root / "images"
    if not images.is_dir():
        return found
    for entry in sorted(images.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and entry.name in experiments:
            for plate in sorted(entry.iterdir()):
                if not plate.name.startswith(".") and (entry.name, plate.name) not in planned:
                    found.append(_orphan(plate, f"no row of metadata.csv has experiment {entry.name} "
                                                f"plate {plate.name.removeprefix('Plate')}"))
        elif not entry.name.startswith("."):
            found.append(_orphan(entry, f"no row of metadata.csv has experiment {entry.name}"))
    return [f for f in found if f is not None]


def _orphan(path: Path, why: str) -> dict | None:
    if path.is_dir():
        n = sum(1 for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if n == 0:
            return None
        detail = f"folder with {n} image file(s): {why}"
    elif path.suffix.lower() in IMAGE_SUFFIXES:
        detail = f"image file outside any plate folder ({why})"
    else:
        return None
    return {"experiment": "", "plate": pd.NA, "site_id": "", "metadata_line": pd.NA, "file": str(path),
            "problem": "no_metadata", "detail": detail}


def _site_paths(files, layout: str, well: str, site: int) -> list[Path]:
    if layout == "png":
        return png_paths(files.folder, well, site)
    found = files.tiff.get((well, int(site)))
    return list(found) if found else [files.folder / f"{well}_s{int(site)}.tif"]


def _unused_images(files, used: set) -> list[Path]:
    paths = [p for channels in files.png.values() for p in channels.values()]
    paths += [p for group in files.tiff.values() for p in group]
    return sorted([p for p in paths if p not in used] + list(files.unrecognised))


def _sites_table(records) -> pd.DataFrame:
    table = pd.DataFrame(records, columns=SITES_COLUMNS)
    for column in ("Metadata_plate", "Metadata_site", "Metadata_sirna_id", "Metadata_height", "Metadata_width"):
        table[column] = table[column].astype("int64")
    table["Metadata_synthetic"] = table["Metadata_synthetic"].astype(bool)
    for column in SITES_COLUMNS:
        if table[column].dtype == object:
            table[column] = table[column].astype(str)
    return table


def _size(shape) -> str:
    return f"{shape[1]}x{shape[0]} px"


def _describe(problem: dict) -> str:
    where = []
    if problem.get("site_id"):
        where.append(f"site {problem['site_id']}")
    if pd.notna(problem.get("metadata_line")):
        where.append(f"metadata.csv line {problem['metadata_line']}")
    suffix = f" ({', '.join(where)})" if where else ""
    return f"{problem['file']}: [{problem['problem']}] {problem['detail']}{suffix}"
