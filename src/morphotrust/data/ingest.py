"""Ingest: one plate of an RxRx1 folder -> canonical `(6, H, W)` uint8 TIFF per site + a sites table + a QC table.

Every problem is reported by name: missing channel files, unreadable or wrong-shaped images, 16-bit images
when `data.sixteen_bit` is `refuse`, metadata rows without images and image files without a metadata row.
Each plate job records its problems in its QC table and does not fail on them; `merge` then decides for the
whole run: with `on_bad_site="stop"` it stops with one message listing every plate's problems (grouped by
plate, counted per problem type); with `"skip"` the bad sites are left out and every problem is recorded in
`results/data/qc_skipped.csv`, so nothing disappears silently.

Bit depth is decided here, once: 16-bit sites (PNG or TIFF) are converted to 8 bits with the fixed scaling
`round(v * 255 / sixteen_bit_max)`, clipped to 0..255 (`sixteen_bit_max` 65535: `v / 257`, the exact inverse
of the usual 8 -> 16-bit expansion `x * 257`). The scaling is the same for every site, so intensities stay
comparable between sites and a site's pixels never depend on which other sites are in the run. The sites
table records each site's source bit depth, the scale factor and the fraction of clipped pixels.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from ..images import write_site
from ..io import write_csv, write_parquet
from .rxrx1 import (IMAGE_SUFFIXES, METADATA_COLUMNS, SiteProblem, plate_folder, png_header, png_paths,
                    read_metadata, read_png, read_tiff, resolve_layout, scan_plate, tiff_header)

ON_BAD_SITE = ("stop", "skip")
# A folder holding this file is the synthetic demo (morphotrust.data.demo writes it).
DEMO_MARKER = "SYNTHETIC_DATA_README.txt"
SITES_COLUMNS = [f"Metadata_{c}" for c in METADATA_COLUMNS] + [
    "Metadata_image_path", "Metadata_height", "Metadata_width", "Metadata_synthetic",
    "Metadata_source_bit_depth", "Metadata_intensity_scale", "Metadata_clipped_fraction"]
SIXTEEN_BIT = ("convert", "refuse")
QC_COLUMNS = ["experiment", "plate", "site_id", "metadata_line", "file", "problem", "detail", "action"]
PROBLEMS = {
    "missing_channel": "a channel file of the site is missing",
    "no_images": "a metadata row without any image file",
    "unreadable": "an image file that cannot be read",
    "wrong_shape": "an image of the wrong shape or pixel type",
    "bit_depth": "a 16-bit image while data.sixteen_bit is refuse",
    "no_metadata": "an image file (or folder) without a metadata row",
}


def ingest_plate(root, experiment: str, plate: int, *, sites_dir, table_path, qc_path, layout: str = "auto",
                 on_bad_site: str = "stop", sixteen_bit: str = "convert", sixteen_bit_max: int = 65535,
                 progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Convert every site of one plate to `{sites_dir}/{site_id}.tif` and write the plate's sites and QC
    tables. Reads `{root}/metadata.csv` and `{root}/images/{experiment}/Plate{plate}/`. Returns both tables.

    Problems never make this fail: they are recorded in the QC table (action `skipped`, or `stopped` with
    `on_bad_site="stop"`, when no site of the plate is written) and `merge` stops the run on them."""
    from tqdm import tqdm

    if on_bad_site not in ON_BAD_SITE:
        raise InputError(f"unknown value {on_bad_site!r}", where="config data.on_bad_site",
                         expected=" or ".join(ON_BAD_SITE))
    if sixteen_bit not in SIXTEEN_BIT:
        raise InputError(f"unknown value {sixteen_bit!r}", where="config data.sixteen_bit",
                         expected=" or ".join(SIXTEEN_BIT))
    if not 1 <= int(sixteen_bit_max) <= 65535:
        raise InputError(f"{sixteen_bit_max} is out of range", where="config data.sixteen_bit_max",
                         expected="a whole number from 1 to 65535")
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
        if sixteen_bit == "refuse" and headers[0][1] == np.uint16:
            for path in present:
                record(row, line, SiteProblem("bit_depth", path, "is a 16-bit image and data.sixteen_bit is "
                                              "refuse (set it to convert to scale 16-bit sites to 8 bits)"))
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
        bit_depth = 8 * image.dtype.itemsize
        image, scale, clipped = to_uint8(image, sixteen_bit_max)
        image_path = sites_dir / f"{row.site_id}.tif"
        write_site(image_path, image)
        records.append([getattr(row, c) for c in METADATA_COLUMNS]
                       + [str(image_path), image.shape[1], image.shape[2], synthetic, bit_depth, scale, clipped])

    qc = pd.DataFrame(problems, columns=QC_COLUMNS[2:7])
    qc.insert(0, "plate", plate)
    qc.insert(0, "experiment", experiment)
    qc["metadata_line"] = qc["metadata_line"].astype("Int64")
    qc["action"] = "stopped" if on_bad_site == "stop" else "skipped"
    if problems and on_bad_site == "stop":  # the run stops at merge: a half plate would only mislead
        for record_ in records:  # sites written before a problem showed up in pass 2
            Path(record_[len(METADATA_COLUMNS)]).unlink()
        records = []
    sites = _sites_table(records)
    sites_dir.mkdir(parents=True, exist_ok=True)
    write_csv(qc, qc_path)
    write_parquet(sites, table_path)
    return sites, qc


def merge(tables, qc_tables, *, sites_path, qc_path, root=None, on_bad_site: str = "stop",
          problems_path=None) -> pd.DataFrame:
    """Concatenate the per-plate sites and QC tables. With `root`, also report image folders under
    `{root}/images` that belong to no experiment/plate of the metadata. In stop mode, every problem is written to
    `problems_path` (not an output: the run stops) before the message, which shows at most 50 lines, names it."""
    sites = pd.concat([pd.read_parquet(t) for t in tables] or [_sites_table([])], ignore_index=True)
    sites = _sites_table(sites.sort_values(["Metadata_experiment", "Metadata_plate", "Metadata_well",
                                            "Metadata_site"], kind="stable").values.tolist())
    qc_parts = [pd.read_csv(t, dtype={"site_id": str, "file": str, "detail": str}, keep_default_na=False,
                            na_values={"metadata_line": [""]}) for t in qc_tables]
    qc = pd.concat(qc_parts, ignore_index=True) if qc_parts else pd.DataFrame(columns=QC_COLUMNS)
    qc = qc.reindex(columns=QC_COLUMNS)
    if root is not None:
        orphans = unplanned_images(root)
        if orphans:
            extra = pd.DataFrame(orphans).assign(action="stopped" if on_bad_site == "stop" else "skipped")
            qc = pd.concat([qc, extra], ignore_index=True).reindex(columns=QC_COLUMNS)
    for column in ("plate", "metadata_line"):
        qc[column] = pd.to_numeric(qc[column]).astype("Int64")
    if problems_path is not None:
        Path(problems_path).unlink(missing_ok=True)  # an earlier stopped run's list
    if on_bad_site == "stop" and not qc.empty:
        if problems_path is not None:
            write_csv(qc, problems_path)
        raise InputError(stop_message(qc, root, n_plates=len(qc_tables), problems_path=problems_path))
    if sites.empty:
        raise InputError("no site could be ingested: every site was skipped (see the plates' QC tables "
                         f"{', '.join(map(str, qc_tables[:3]))}{' ...' if len(qc_tables) > 3 else ''})")
    write_csv(qc, qc_path)
    write_parquet(sites, sites_path)
    return sites


def stop_message(qc: pd.DataFrame, root=None, *, n_plates: int, problems_path=None, max_lines: int = 50,
                 shown_per_plate: int = 20) -> str:
    """Every plate's problems in one message of at most `max_lines` lines: grouped by plate, with a count per
    problem type, up to `shown_per_plate` examples per plate (fewer when many plates share the lines) and the file
    holding every problem."""
    groups = qc.groupby([qc["experiment"].astype(str), qc["plate"].astype("string").fillna("")], sort=True)
    bad_plates = sum(1 for (experiment, _), _ in groups if experiment)
    where = f" of {root}" if root is not None else ""
    lines = [f"bad or missing images{where}: {len(qc)} problem(s) on {bad_plates} of {n_plates} plate(s)"
             + (" and in the images folder" if (qc["experiment"].astype(str) == "").any() else "")
             + "; fix them and run again (only the plates whose files changed are ingested again), or set "
             "data.on_bad_site: skip to leave these sites out (each is then recorded in "
             "results/data/qc_skipped.csv). Per problem type: "
             + ", ".join(f"{p} {n}" for p, n in qc["problem"].value_counts().sort_index().items())]
    room = max_lines - 2  # the first line and the last (the full list)
    examples = min(shown_per_plate, max(0, (room - 2 * groups.ngroups) // groups.ngroups))
    shown = 0
    for index, ((experiment, plate), problems) in enumerate(groups):
        name = f"{experiment}/Plate{plate}" if experiment else "image folders no metadata row refers to"
        counts = ", ".join(f"{p} {n}" for p, n in problems["problem"].value_counts().sort_index().items())
        block = [f"  {name}: {len(problems)} problem(s) ({counts})"]
        block += [f"    - {_describe(problem)}" for problem in problems.head(examples).to_dict("records")]
        if examples and len(problems) > examples:
            listed = f", listed in results/data/ingest/{experiment}/Plate{plate}/qc.csv" if experiment else ""
            block.append(f"    ... and {len(problems) - examples} more{listed}")
        if len(lines) - 1 + len(block) > room - (index < groups.ngroups - 1):  # keep a line for the rest
            lines.append(f"  ... and {groups.ngroups - index} more plate(s) with {len(qc) - shown} problem(s)")
            break
        lines += block
        shown += len(problems)
    if problems_path is not None:
        lines.append(f"every problem, one per line: {problems_path}")
    return "\n".join(lines)


def to_uint8(image: np.ndarray, sixteen_bit_max: int = 65535) -> tuple[np.ndarray, float, float]:
    """(uint8 image, scale factor, fraction of clipped pixels). uint8 passes unchanged (scale 1); uint16 is
    scaled by 255 / sixteen_bit_max, rounded half up and clipped at 255."""
    if image.dtype == np.uint8:
        return image, 1.0, 0.0
    top = int(sixteen_bit_max)
    values = image.astype(np.uint32)
    clipped = float(np.mean(values > top))
    converted = np.minimum((values * 255 + top // 2) // top, 255).astype(np.uint8)
    return converted, 255.0 / top, clipped


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
    for column in ("Metadata_plate", "Metadata_site", "Metadata_sirna_id", "Metadata_height", "Metadata_width",
                   "Metadata_source_bit_depth"):
        table[column] = table[column].astype("int64")
    for column in ("Metadata_intensity_scale", "Metadata_clipped_fraction"):
        table[column] = table[column].astype("float64")
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
