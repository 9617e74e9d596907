"""Sites in, per-image CellProfiler tables out.

prepare: the sites of one source (real: the subset manifest, each site read from its canonical ingested TIFF
at native resolution, NOT the generator's downsampled stacks; generated: a generated manifest + canonical
TIFFs), capped per condition, become one folder that CellProfiler reads:

    {out_dir}/images/{key}_w{1..6}.png   one 8-bit grayscale PNG per stain, at morphology.resolution
    {out_dir}/chunk_{NNN}.csv            LoadData tables, sites dealt round-robin, image paths relative to out_dir
    {out_dir}/sites.parquet              Metadata_SiteKey, the chunk and every Metadata_ column of the manifest
    {out_dir}/resize.json                the sizes read and how they were brought to the resolution

Generated images are brought to the real sites' scale: area averaging (PIL box filter) to shrink, bicubic to
enlarge (a 64-px generator's images measured at 128 px). Real sites are resized when morphology.resolution is
an integer other than their own size, and, with `via_px` (morphology.real_detail: generator), first box-filtered
to the generator's resolution and enlarged back exactly as a generated image is: real and generated then carry
the same detail, so a perfect generator measures as real rather than as blurred.

merge: the per-chunk Image.csv tables become one table per source, one row per site, with the manifest's
Metadata_ columns joined on the site key (CellProfiler's own Metadata_ columns are dropped), every column
named in pycytominer's conventions (Nuclei_AreaShape_Area_Mean, Image_Count_Nuclei, Metadata_Plate, ...; the
mapping: morphotrust.morphology.fields).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from ..errors import InputError
from ..images import read_site, resize_site
from ..io import write_csv, write_json, write_parquet
from .cellprofiler import SITE_KEY
from .fields import to_field_conventions

# LoadData image names of the stains, channel order w1..w6 (RxRx1). The pipeline refers to these names.
STAIN_NAMES = ("DNA", "ER", "Actin", "RNA", "Mito", "Golgi")
# qc: every ingested site of one plate (results/data/ingest/{experiment}/Plate{plate}/sites.parquet) for the
# light QC pass; read like the real sites (native TIFFs, the same resolution).
# reconstructions: held-out real sites round-tripped through the autoencoder, read like generated images.
SOURCES = ("real", "generated", "reconstructions", "qc")
REQUIRED = {
    "real": ("Metadata_condition", "Metadata_image_path"),
    "generated": ("Metadata_condition", "Metadata_image_path"),
    "reconstructions": ("Metadata_condition", "Metadata_image_path"),
    "qc": ("Metadata_site_id", "Metadata_image_path"),
}
# Image-quality columns the QC report reads (CellProfiler's names, as in a chunk's Image.csv; Image_-prefixed
# after merge): they must be in every per-image table.
QC_COLUMNS = tuple(f"ImageQuality_{m}_{s}" for m in ("PowerLogLogSlope", "PercentMaximal") for s in STAIN_NAMES)


def read_manifest(path, source: str) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise InputError("manifest not found", file=path)
    table = pd.read_parquet(path)
    missing = [c for c in REQUIRED[source] if c not in table.columns]
    if missing:
        raise InputError(f"missing column(s) {', '.join(missing)}", file=path,
                         expected=f"a {source} manifest as described in docs/design.md")
    if table.empty:
        raise InputError("the manifest has no rows", file=path, expected="at least one site")
    return table.reset_index(drop=True)


def select_sites(manifest: pd.DataFrame, max_per_condition: int | None, seed: int) -> pd.DataFrame:
    """At most `max_per_condition` rows per Metadata_condition, drawn at random (seeded); order and index kept."""
    if max_per_condition is None:
        return manifest.copy()
    rng = np.random.default_rng(seed)
    keep = []
    for _, rows in manifest.groupby("Metadata_condition", sort=True):
        index = rows.index.to_numpy()
        if len(index) > max_per_condition:
            index = rng.choice(index, size=max_per_condition, replace=False)
        keep.extend(index.tolist())
    return manifest.loc[sorted(keep)]


def resample_method(size_in: int, size_out: int) -> str:
    if size_in == size_out:
        return "none"
    return "area average (box filter)" if size_in > size_out else "bicubic"


def passes_through(via_px: int | None, size_in: int, size_out: int) -> bool:
    """Whether a site of `size_in` px takes the detour through `via_px` on its way to `size_out` px."""
    return via_px is not None and via_px < min(size_in, size_out)


def resize_record(size_in: int, size_out: int, via_px: int | None = None) -> str:
    """How a site of `size_in` px reaches `size_out` px, in words (resize.json, reports)."""
    if passes_through(via_px, size_in, size_out):
        return (f"{resample_method(size_in, via_px)} to {via_px} px (the generator's resolution), then "
                f"{resample_method(via_px, size_out)}")
    return resample_method(size_in, size_out)


def to_resolution(image: np.ndarray, resolution: int) -> np.ndarray:
    """A uint8 `(6, H, W)` site at `resolution` px: box filter to shrink, bicubic to enlarge."""
    if image.shape[1] == resolution:
        return image
    if image.shape[1] > resolution:
        return resize_site(image, resolution)
    planes = [np.asarray(Image.fromarray(plane.astype(np.float32)).resize((resolution, resolution),
                                                                         Image.Resampling.BICUBIC))
              for plane in image]
    return np.clip(np.rint(np.stack(planes)), 0, 255).astype(np.uint8)


def _site_images(table: pd.DataFrame, manifest_path, native_px: int | None):
    for line, path in zip(table.index, table["Metadata_image_path"]):  # index = manifest row
        if not Path(path).is_file():
            raise InputError(f"image {path} not found", file=manifest_path, where=f"row {line}")
        try:
            image = read_site(path)
        except ValueError as error:
            raise InputError(str(error), file=manifest_path, where=f"row {line}") from None
        if image.dtype != np.uint8:
            raise InputError(f"image {path} is {image.dtype}", file=manifest_path, where=f"row {line}",
                             expected="8-bit (uint8) images, like the real RxRx1 PNGs")
        if image.shape[1] != image.shape[2]:
            raise InputError(f"image {path} is {image.shape[2]}x{image.shape[1]} pixels", file=manifest_path,
                             where=f"row {line}", expected="square images")
        if native_px is not None and image.shape[1] != native_px:
            raise InputError(
                f"real site {path} is {image.shape[1]} px, but its pixel size is worked out for {native_px}-px sites",
                file=manifest_path, where=f"row {line}",
                expected="sites of the native size (data.demo.image_size for the demo, 512 for RxRx1); for other "
                         "data set morphology.pixel_size_um to the µm per pixel of these images")
        yield image


def prepare(source: str, manifest_path, out_dir, *, resolution: int, chunk_size: int,
            max_sites_per_condition: int | None = None, seed: int = 0, native_px: int | None = None,
            via_px: int | None = None, progress: bool = True) -> pd.DataFrame:
    """Write PNGs, LoadData chunk CSVs, sites.parquet and resize.json for one source; return the sites table.

    `resolution`: px CellProfiler measures. `native_px` (real sites only): the size the pixel size was worked
    out for; a real site of another size is an error rather than a silently wrong scale. `via_px`: pass each
    site through this size first (the generator's resolution) when it is below both the site's and `resolution`.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, not {source!r}")
    if chunk_size < 1:
        raise InputError(f"chunk size {chunk_size}", where="config morphology.chunk_size", expected="at least 1")
    manifest = read_manifest(manifest_path, source)
    table = select_sites(manifest, max_sites_per_condition, seed)
    n_chunks = math.ceil(len(table) / chunk_size)
    keys = [f"{source}{i:06d}" for i in range(len(table))]  # text keys: CellProfiler mangles numeric metadata
    chunks = [i % n_chunks + 1 for i in range(len(table))]  # round-robin: every chunk gets every condition

    out_dir = Path(out_dir)
    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("chunk_*.csv"):  # from an earlier run with more chunks
        stale.unlink()
    images = _site_images(table, manifest_path, native_px if source in ("real", "qc") else None)
    rows, sizes = [], set()
    for key, image in tqdm(zip(keys, images), total=len(keys), desc=f"{source} sites -> PNG",
                           disable=not progress, mininterval=5):
        sizes.add(int(image.shape[1]))
        if passes_through(via_px, image.shape[1], resolution):
            image = to_resolution(image, via_px)
        image = to_resolution(image, resolution)
        row = {}
        for channel, name in enumerate(STAIN_NAMES):
            filename = f"{key}_w{channel + 1}.png"
            Image.fromarray(np.ascontiguousarray(image[channel])).save(images_dir / filename, compress_level=1)
            row[f"FileName_{name}"] = filename
            row[f"PathName_{name}"] = "images"  # relative to the folder passed to CellProfiler with -i
        row[SITE_KEY] = key
        rows.append(row)
    load_data = pd.DataFrame(rows)
    for chunk in range(1, n_chunks + 1):
        write_csv(load_data[[c == chunk for c in chunks]], out_dir / f"chunk_{chunk:03d}.csv")

    metadata = table[[c for c in table.columns if c.startswith("Metadata_")]].reset_index(drop=True)
    sites = pd.concat([pd.DataFrame({SITE_KEY: keys, "chunk": chunks}), metadata], axis=1)
    write_parquet(sites, out_dir / "sites.parquet")
    write_json({"source": source, "input_px": sorted(sizes), "resolution_px": int(resolution),
                "resize": {str(s): resize_record(s, resolution, via_px) for s in sorted(sizes)}}, out_dir / "resize.json")
    return sites


def merge(sites_path, chunk_tables, out_path, gate=None) -> pd.DataFrame:
    """Concatenate per-chunk Image.csv tables, check one row per site, join the manifest's Metadata_ columns,
    name the columns in pycytominer's conventions (morphotrust.morphology.fields).

    `gate` = keyword arguments of `gate.gate_sites` (pixel_size_um, nuclei_diameter_um, gate): add the
    segmentation gate's columns.
    """
    table = merge_tables(sites_path, chunk_tables)
    if gate is not None:
        from .gate import gate_sites

        table = gate_sites(table, source=sites_path, **gate)
    write_parquet(table, out_path)
    return table


def merge_tables(sites_path, chunk_tables) -> pd.DataFrame:
    """The merged per-image table of one prepared folder (see `merge`), not written."""
    sites = pd.read_parquet(sites_path)
    parts = []
    for path in chunk_tables:
        part = pd.read_csv(path, low_memory=False)
        if SITE_KEY not in part.columns:
            raise InputError(f"no {SITE_KEY} column", file=path, expected="an Image.csv of a morphology chunk")
        qc_missing = [c for c in QC_COLUMNS if c not in part.columns]
        if qc_missing:
            raise InputError(f"CellProfiler output lacks image-quality columns {qc_missing[:4]}", file=path,
                             expected="a pipeline with MeasureImageQuality (blur and saturation) on all six stains")
        parts.append(part)
    if not parts:
        raise InputError("no chunk tables to merge", file=sites_path)
    images = pd.concat(parts, ignore_index=True)
    images[SITE_KEY] = images[SITE_KEY].astype(str)
    duplicated = images.loc[images[SITE_KEY].duplicated(), SITE_KEY].tolist()
    missing = sorted(set(sites[SITE_KEY]) - set(images[SITE_KEY]))
    extra = sorted(set(images[SITE_KEY]) - set(sites[SITE_KEY]))
    if duplicated or missing or extra:
        raise InputError(f"chunk tables do not hold each site once: {len(missing)} missing {missing[:5]}, "
                         f"{len(duplicated)} duplicated {duplicated[:5]}, {len(extra)} unknown {extra[:5]}",
                         file=sites_path)
    measurements = images[[SITE_KEY] + [c for c in images.columns if not c.startswith("Metadata_")]]
    metadata = sites.drop(columns="chunk")
    table = metadata.merge(measurements, on=SITE_KEY, how="left", validate="one_to_one").drop(columns=SITE_KEY)
    return to_field_conventions(table, source=sites_path)


def qc_merge(plate_dirs, out_path, *, pixel_size_um: float, nuclei_diameter_um, gate=None) -> tuple[pd.DataFrame, dict]:
    """The QC pass of every plate -> one table (results/morphology/qc_image.parquet) with the segmentation gate.

    Each plate folder holds `chunks/sites.parquet` (prepare) and `image.csv` (run-chunk). Stops with an
    InputError when most real sites fail the gate (`gate.check_source`); returns (table, failure counts).
    """
    from .gate import check_source, gate_sites

    parts = []
    for plate_dir in plate_dirs:
        plate_dir = Path(plate_dir)
        sites_path = plate_dir / "chunks" / "sites.parquet"
        parts.append(gate_sites(merge_tables(sites_path, [plate_dir / "image.csv"]), pixel_size_um=pixel_size_um,
                                nuclei_diameter_um=nuclei_diameter_um, gate=gate, source=sites_path))
    if not parts:
        raise InputError("no plate to merge", where="morphology qc-merge", expected="at least one plate folder")
    table = pd.concat(parts, ignore_index=True)
    summary = check_source(table, source="real (QC pass of every ingested site)", pixel_size_um=pixel_size_um,
                           nuclei_diameter_um=nuclei_diameter_um, gate=gate, file=out_path)
    write_parquet(table, out_path)
    return table, summary
