"""CellProfiler morphology: pipeline sizes from µm, chunk preparation, merging, feature cleaning, and real
headless CellProfiler runs (marked `cellprofiler`) on demo sites. Segmentation on real microscopy with ground
truth (DSB2018, ExampleFly) and on the demo's known nuclei: tests/test_segmentation.py."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.preprocessing import StandardScaler

from morphotrust.errors import InputError
from morphotrust.images import read_site, resize_site, write_site
from morphotrust.morphology.cellprofiler import (OWNER, CellProfilerError, cellprofiler_command, cellprofiler_output_path,
                                                claim_scratch, resolve_executable, run_chunk)
from morphotrust.morphology.cleaning import FeatureCleaner, clean, is_metadata_like
from morphotrust.morphology.fields import field_name, image_feature, to_field_conventions
from morphotrust.morphology.pipeline import REFERENCE, rescale_pipeline, write_pipeline
from morphotrust.morphology.sites import QC_COLUMNS, STAIN_NAMES, merge, prepare, select_sites

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ROOT / "resources" / "cellprofiler" / "rxrx1_six_stain.cppipe"
DATA = Path(__file__).resolve().parent / "data"
CELLPROFILER = os.environ.get("MORPHOTRUST_CELLPROFILER", str(ROOT / ".venv-cellprofiler" / "bin" / "cellprofiler"))


def _setting(text, module, name):
    """Values of `name` in every `module` of a .cppipe text."""
    values, current = [], None
    for line in text.splitlines():
        if ":[module_num:" in line and not line.startswith(" "):
            current = line.split(":", 1)[0]
        elif current == module and line.strip().startswith(name + ":"):
            values.append(line.strip()[len(name) + 1:])
    return values


# --------------------------------------------------------------------------------------------------
# pipeline scaling


def test_pipeline_sizes_follow_physical_scale():
    text = PIPELINE.read_text()
    # the committed pipeline holds the values of its reference scale: writing it for that scale changes nothing
    assert rescale_pipeline(text, REFERENCE["pixel_size_um"], REFERENCE["nuclei_diameter_um"]) == (text, [])
    # the demo at its native 128 px (0.875 µm/px), nuclei 6-30 µm: typical 13.4 µm = 15.3 px
    scaled, changes = rescale_pipeline(text, 0.875, (6, 30))
    assert _setting(scaled, "IdentifyPrimaryObjects", "Typical diameter of objects, in pixel units (Min,Max)") == ["6,35"]
    assert _setting(scaled, "IdentifyPrimaryObjects", "Size of smoothing filter") == ["4"]
    assert _setting(scaled, "IdentifyPrimaryObjects",
                    "Suppress local maxima that are closer than this minimum allowed distance") == ["6.0"]
    assert _setting(scaled, "IdentifyPrimaryObjects", "Size of adaptive window") == ["23"]
    assert _setting(scaled, "MeasureTexture", "Texture scale to measure") == ["2"]
    assert _setting(scaled, "MeasureImageQuality", "Spatial scale for blur measurements") == ["15"]
    assert _setting(scaled, "MeasureObjectNeighbors", "Neighbor distance") == ["11", "11"]
    assert _setting(scaled, "MeasureGranularity", "Subsampling factor for granularity measurements") == ["0.875"]
    # the secondary objects' adaptive window (not in effect) is not touched
    assert _setting(scaled, "IdentifySecondaryObjects", "Size of adaptive window") == \
        _setting(text, "IdentifySecondaryObjects", "Size of adaptive window")
    before, after = text.splitlines(), scaled.splitlines()
    assert len(before) == len(after) and sum(a != b for a, b in zip(before, after)) == len(changes)
    # twice the pixel size: every object-scale length in px halves (a 64-px demo site)
    coarse, _ = rescale_pipeline(text, 1.75, (6, 30))
    assert _setting(coarse, "IdentifyPrimaryObjects", "Typical diameter of objects, in pixel units (Min,Max)") == ["3,18"]
    assert _setting(coarse, "MeasureGranularity", "Subsampling factor for granularity measurements") == ["1"]


def test_pipeline_errors(tmp_path):
    out = tmp_path / "p.cppipe"
    write_pipeline(PIPELINE, out, pixel_size_um=1.0, nuclei_diameter_um=(5, 30))
    assert _setting(out.read_text(), "IdentifyPrimaryObjects",
                    "Typical diameter of objects, in pixel units (Min,Max)") == ["5,30"]
    with pytest.raises(InputError, match="not a CellProfiler pipeline"):
        rescale_pipeline("hello", 1.0, (6, 30))
    # a custom pipeline without texture: said, not silently left at the wrong size
    no_texture = PIPELINE.read_text().replace("Texture scale to measure", "Something else")
    with pytest.raises(InputError, match="MeasureTexture 'Texture scale to measure'"):
        rescale_pipeline(no_texture, 1.0, (6, 30), source="custom.cppipe")
    with pytest.raises(InputError, match="morphology.nuclei_diameter_um"):
        rescale_pipeline(PIPELINE.read_text(), 1.0, (30, 6))
    with pytest.raises(InputError, match="morphology.pixel_size_um"):
        rescale_pipeline(PIPELINE.read_text(), 0, (6, 30))
    with pytest.raises(InputError, match="not found"):
        write_pipeline(tmp_path / "missing.cppipe", out, pixel_size_um=1.0, nuclei_diameter_um=(6, 30))


# --------------------------------------------------------------------------------------------------
# preparing chunks and merging tables


def _real_inputs(tmp_path, n=7, size=32):
    """A subset manifest whose sites point at canonical (native) TIFFs, as results/subsets/manifest.parquet."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        split = "train" if i < 4 else "evaluation"
        path = tmp_path / "sites" / f"{i}.tif"
        write_site(path, rng.integers(0, 256, (6, size, size), dtype=np.uint8))
        rows.append({"Metadata_site_id": f"{split}-{i}", "Metadata_condition": f"HUVEC:{i % 2}",
                     "Metadata_split": split, "Metadata_stack_index": i, "Metadata_source": "real",
                     "Metadata_image_path": str(path)})
    manifest = tmp_path / "manifest.parquet"
    pd.DataFrame(rows).to_parquet(manifest)
    return manifest


def test_select_sites_caps_each_condition_reproducibly():
    table = pd.DataFrame({"Metadata_condition": ["a"] * 10 + ["b"] * 3, "x": range(13)})
    picked = select_sites(table, 4, seed=1)
    assert picked.groupby("Metadata_condition").size().to_dict() == {"a": 4, "b": 3}
    assert picked["x"].is_monotonic_increasing and picked.index.equals(pd.Index(picked["x"]))  # manifest rows
    assert picked.equals(select_sites(table, 4, seed=1))
    assert not picked.equals(select_sites(table, 4, seed=2))
    assert len(select_sites(table, None, seed=1)) == 13


def test_prepare_real_reads_native_sites_in_round_robin_chunks(tmp_path):
    manifest = _real_inputs(tmp_path)
    out = tmp_path / "chunks"
    sites = prepare("real", manifest, out, resolution=32, chunk_size=3, native_px=32, progress=False)
    assert len(sites) == 7 and sorted(p.name for p in out.glob("chunk_*.csv")) == [
        "chunk_001.csv", "chunk_002.csv", "chunk_003.csv"]
    sizes = [len(pd.read_csv(out / f"chunk_00{i}.csv")) for i in (1, 2, 3)]
    assert sizes == [3, 2, 2]
    chunk = pd.read_csv(out / "chunk_002.csv")
    assert (chunk["PathName_DNA"] == "images").all()  # relative to the folder given to CellProfiler (-i)
    # the PNG of stain w5 of the 6th site holds exactly that plane of its native TIFF (no resizing)
    key = sites["Metadata_SiteKey"][5]
    png = np.array(Image.open(out / "images" / f"{key}_w5.png"))
    assert np.array_equal(png, read_site(tmp_path / "sites" / "5.tif")[4])
    assert sites.loc[5, "Metadata_site_id"] == "evaluation-5"
    saved = pd.read_parquet(out / "sites.parquet")
    assert saved["Metadata_SiteKey"].tolist() == sites["Metadata_SiteKey"].tolist()
    assert json.loads((out / "resize.json").read_text()) == {
        "source": "real", "input_px": [32], "resolution_px": 32, "resize": {"32": "none"}}
    # an integer morphology.resolution shrinks real sites by area averaging
    prepare("real", manifest, tmp_path / "small", resolution=16, chunk_size=7, native_px=32, progress=False)
    small = np.array(Image.open(tmp_path / "small" / "images" / f"{key}_w5.png"))
    assert np.array_equal(small, resize_site(read_site(tmp_path / "sites" / "5.tif"), 16)[4])
    # morphology.real_detail: generator: a real site takes the generated images' path (box filter to the
    # generator's 16 px, then bicubic to the 32 px measured), so it equals a perfect 16-px generator's image
    via = prepare("real", manifest, tmp_path / "via", resolution=32, chunk_size=7, native_px=32, via_px=16,
                  progress=False)
    assert json.loads((tmp_path / "via" / "resize.json").read_text())["resize"] == {
        "32": "area average (box filter) to 16 px (the generator's resolution), then bicubic"}
    perfect = tmp_path / "perfect"
    perfect.mkdir()
    write_site(perfect / "5.tif", resize_site(read_site(tmp_path / "sites" / "5.tif"), 16))
    pd.DataFrame({"Metadata_condition": ["c"], "Metadata_image_path": [str(perfect / "5.tif")]}).to_parquet(
        perfect / "manifest.parquet")
    prepare("generated", perfect / "manifest.parquet", perfect / "chunks", resolution=32, chunk_size=1,
            progress=False)
    for stain in range(1, 7):
        real_png = np.array(Image.open(tmp_path / "via" / "images" / f"{via['Metadata_SiteKey'][5]}_w{stain}.png"))
        generated_png = np.array(Image.open(perfect / "chunks" / "images" / f"generated000000_w{stain}.png"))
        assert np.array_equal(real_png, generated_png)
        assert not np.array_equal(real_png, read_site(tmp_path / "sites" / "5.tif")[stain - 1])
    # a real site of another size than the pixel size was worked out for is an error, not a wrong scale
    with pytest.raises(InputError, match="morphology.pixel_size_um"):
        prepare("real", manifest, tmp_path / "bad", resolution=64, chunk_size=7, native_px=64, progress=False)


def test_prepare_generated_resizes_and_rejects_bad_images(tmp_path):
    image = np.full((6, 32, 32), 40, dtype=np.uint8)
    write_site(tmp_path / "a.tif", image)
    manifest = tmp_path / "gen.parquet"
    pd.DataFrame({"Metadata_sample_id": ["g0"], "Metadata_condition": ["RPE:1"],
                  "Metadata_image_path": [str(tmp_path / "a.tif")]}).to_parquet(manifest)
    prepare("generated", manifest, tmp_path / "c", resolution=16, chunk_size=5, progress=False)
    assert Image.open(tmp_path / "c" / "images" / "generated000000_w1.png").size == (16, 16)
    assert json.loads((tmp_path / "c" / "resize.json").read_text())["resize"] == {"32": "area average (box filter)"}
    # a 32-px generator measured at a 64-px real scale: enlarged (bicubic), a flat image stays flat
    prepare("generated", manifest, tmp_path / "up", resolution=64, chunk_size=5, progress=False)
    up = np.array(Image.open(tmp_path / "up" / "images" / "generated000000_w1.png"))
    assert up.shape == (64, 64) and (up == 40).all()
    assert json.loads((tmp_path / "up" / "resize.json").read_text())["resize"] == {"32": "bicubic"}

    write_site(tmp_path / "b.tif", image.astype(np.uint16))
    pd.DataFrame({"Metadata_condition": ["RPE:1"], "Metadata_image_path": [str(tmp_path / "b.tif")]}).to_parquet(manifest)
    with pytest.raises(InputError, match="row 0: image .*b.tif is uint16"):
        prepare("generated", manifest, tmp_path / "d", resolution=16, chunk_size=5, progress=False)
    pd.DataFrame({"Metadata_condition": ["RPE:1"]}).to_parquet(manifest)
    with pytest.raises(InputError, match="Metadata_image_path"):
        prepare("generated", manifest, tmp_path / "e", resolution=16, chunk_size=5, progress=False)


def _image_csv(keys, seed=0):
    rng = np.random.default_rng(seed)
    table = pd.DataFrame({"ImageNumber": range(1, len(keys) + 1), "Metadata_SiteKey": keys,
                          "Metadata_FileLocation": "x", "Count_Nuclei": rng.integers(1, 30, len(keys))})
    for column in QC_COLUMNS:
        table[column] = rng.normal(size=len(keys))
    return table


def test_merge_joins_manifest_metadata_and_checks_every_site(tmp_path):
    manifest = _real_inputs(tmp_path)
    out = tmp_path / "chunks"
    sites = prepare("real", manifest, out, resolution=16, chunk_size=4, progress=False)
    keys = sites["Metadata_SiteKey"].tolist()
    _image_csv(keys[1::2]).to_csv(tmp_path / "c2.csv", index=False)
    _image_csv(keys[0::2], seed=1).to_csv(tmp_path / "c1.csv", index=False)
    table = merge(out / "sites.parquet", [tmp_path / "c1.csv", tmp_path / "c2.csv"], tmp_path / "real.parquet")
    assert table["Metadata_site_id"].tolist() == sites["Metadata_site_id"].tolist()  # manifest order
    assert "Metadata_SiteKey" not in table and "Metadata_FileLocation" not in table  # CellProfiler's own dropped
    assert table["Metadata_split"].tolist() == sites["Metadata_split"].tolist()
    expected = pd.concat([_image_csv(keys[0::2], seed=1), _image_csv(keys[1::2])]).set_index("Metadata_SiteKey")
    # columns in pycytominer's conventions: bookkeeping is metadata, image measurements are Image_
    assert np.array_equal(table["Image_Count_Nuclei"], expected.loc[keys, "Count_Nuclei"])
    assert "Metadata_ImageNumber" in table and "ImageNumber" not in table and "Count_Nuclei" not in table
    assert all(image_feature(c) in table for c in QC_COLUMNS)

    _image_csv(keys[1::2][:-1]).to_csv(tmp_path / "c3.csv", index=False)  # the last odd site is lost
    with pytest.raises(InputError, match="1 missing"):
        merge(out / "sites.parquet", [tmp_path / "c1.csv", tmp_path / "c3.csv"], tmp_path / "x.parquet")
    with pytest.raises(InputError, match="duplicated"):
        merge(out / "sites.parquet", [tmp_path / "c1.csv", tmp_path / "c2.csv", tmp_path / "c2.csv"],
              tmp_path / "x.parquet")
    _image_csv(keys[1::2]).drop(columns=QC_COLUMNS[0]).to_csv(tmp_path / "c4.csv", index=False)
    with pytest.raises(InputError, match="image-quality"):
        merge(out / "sites.parquet", [tmp_path / "c1.csv", tmp_path / "c4.csv"], tmp_path / "x.parquet")


def test_field_names_follow_pycytominer_conventions():
    mapping = {
        "Mean_Nuclei_AreaShape_Area": "Nuclei_AreaShape_Area_Mean",
        "Median_Cells_Texture_Contrast_DNA_3_00_256": "Cells_Texture_Contrast_DNA_3_00_256_Median",
        "StDev_Cytoplasm_Intensity_MeanIntensity_RNA": "Cytoplasm_Intensity_MeanIntensity_RNA_StDev",
        "Count_Nuclei": "Image_Count_Nuclei", "ImageQuality_PowerLogLogSlope_DNA": "Image_ImageQuality_PowerLogLogSlope_DNA",
        "Granularity_1_DNA": "Image_Granularity_1_DNA", "Threshold_FinalThreshold_Cells": "Image_Threshold_FinalThreshold_Cells",
        "ImageNumber": "Metadata_ImageNumber", "Group_Index": "Metadata_Group_Index",
        "ExecutionTime_08MeasureTexture": "Metadata_ExecutionTime_08MeasureTexture",
        "FileName_DNA": "Metadata_FileName_DNA", "MD5Digest_DNA": "Metadata_MD5Digest_DNA", "Width_DNA": "Metadata_Width_DNA",
        "Metadata_plate": "Metadata_Plate", "Metadata_well": "Metadata_Well", "Metadata_site": "Metadata_Site",
        "Metadata_condition": "Metadata_condition",
    }
    assert {column: field_name(column) for column in mapping} == mapping
    with pytest.raises(InputError, match="would both be named 'Metadata_Plate'"):
        to_field_conventions(pd.DataFrame({"Metadata_plate": [1], "Metadata_Plate": [1]}), source="t.parquet")


def test_missing_executable_says_how_to_install(tmp_path):
    with pytest.raises(InputError, match="install_cellprofiler.sh"):
        resolve_executable(str(tmp_path / "nope" / "cellprofiler"))
    with pytest.raises(InputError, match="not on PATH"):
        resolve_executable("surely-no-such-cellprofiler")


def _gone(pid, seconds=10) -> bool:
    for _ in range(int(seconds * 10)):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_a_stopped_chunk_kills_a_cellprofiler_that_ignores_sigterm(tmp_path):
    """CellProfiler's JVM ignores SIGTERM mid-measurement; a Snakemake / SLURM stop must still end it (a live orphan
    made the stopped workflow hang in CI). The stand-in child ignores SIGTERM the same way."""
    child_pid = tmp_path / "child.pid"
    stubborn = (f"import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                f"open({str(child_pid)!r}, 'w').write(str(os.getpid())); time.sleep(120)")
    wrapper = (f"import sys; from morphotrust.morphology.cellprofiler import Stopped, die_of, run_stoppable, "
               f"stop_signals\ntry:\n    with stop_signals():\n        run_stoppable([sys.executable, '-c', "
               f"{stubborn!r}])\nexcept Stopped as stopped:\n    die_of(stopped)")
    process = subprocess.Popen([sys.executable, "-c", wrapper])
    deadline = time.monotonic() + 60
    while not child_pid.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.2)
    pid = int(child_pid.read_text())
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == -signal.SIGTERM
    assert _gone(pid), "the SIGTERM-ignoring child outlived its stopped wrapper"


def _hold(lock_path: Path, *, live: bool):
    """A process that holds `lock_path` as a chunk job does (live), or one that held it and was SIGKILLed."""
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"handle = open({str(lock_path)!r}, 'w'); fcntl.flock(handle, fcntl.LOCK_EX)\n"
        "handle.write(str(os.getpid())); handle.flush(); print('held', flush=True); time.sleep(120)")],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    if not live:
        holder.kill()
        holder.wait()
    return holder


def test_a_chunk_job_stops_an_earlier_job_on_its_chunk_and_removes_dead_jobs_scratch(tmp_path):
    """Issue 26: a job of an earlier, killed Snakemake still holding the chunk's scratch folder is stopped; scratch
    folders whose job was SIGKILLed are removed by the next job in their folder; live jobs' folders are kept."""
    mine, dead, alive = (tmp_path / f".chunk_00{i}.csv.cellprofiler" for i in (1, 2, 3))
    for folder in (mine, dead, alive):
        folder.mkdir()
    earlier = _hold(mine / OWNER, live=True)
    _hold(dead / OWNER, live=False)
    neighbour = _hold(alive / OWNER, live=True)
    try:
        handle, note = claim_scratch(mine)
        assert earlier.wait(timeout=30) == -signal.SIGTERM
        assert f"stopped an earlier job (pid {earlier.pid}, SIGTERM)" in note
        assert (mine / OWNER).read_text().strip() == str(os.getpid())
        assert not dead.exists() and (alive / OWNER).exists()
        handle.close()
    finally:
        for process in (earlier, neighbour):
            process.kill()
            process.wait()


def test_a_chunk_job_that_cannot_write_names_the_file_and_leaves_no_scratch(demo_sites, tmp_path):
    """Issue 26: a write failing half-way (a file-size limit: EFBIG, as a full disk fails with ENOSPC) is one line
    naming the file and the cause, in the terminal and the job's log; the scratch folder is removed."""
    import resource

    work, manifest, pipeline = demo_sites
    chunks = tmp_path / "chunks"
    prepare("generated", manifest, chunks, resolution=128, chunk_size=4, progress=False)
    out, log = tmp_path / "out" / "chunk_001.csv", tmp_path / "chunk.log"

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (32768, 32768))  # a 128-px float32 plane is 64 KiB

    result = subprocess.run(
        [sys.executable, "-m", "morphotrust", "morphology", "run-chunk", "--cellprofiler", sys.executable,
         "--pipeline", str(pipeline), "--data-file", str(chunks / "chunk_001.csv"), "--out", str(out),
         "--log", str(log)], capture_output=True, text=True, preexec_fn=limit,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert result.returncode == 1, result.stderr
    scratch = out.parent / ".chunk_001.csv.cellprofiler"
    expected = (f"morphotrust: error: cannot write {scratch}/npy/images/generated000000_w1.npy: 16384 requested "
                "and 8160 written (a file-size limit, ulimit -f, of 32768 bytes)")  # numpy's words, and the cause
    assert result.stderr.strip().splitlines() == [expected], result.stderr
    assert log.read_text().splitlines()[-1] == expected
    assert not scratch.exists() and not out.exists()


# --------------------------------------------------------------------------------------------------
# feature cleaning


def _tables(n_real=60, n_gen=20, seed=0):
    """Per-image tables in pycytominer's conventions (as merge writes them), one column per cleaning rule."""
    rng = np.random.default_rng(seed)

    def table(n, offset):
        return pd.DataFrame({
            "Metadata_site_id": [f"s{offset + i}" for i in range(n)],
            "Metadata_ImageNumber": np.arange(n), "Metadata_FileName_DNA": "a.png",  # bookkeeping: not features
            "Metadata_ExecutionTime_01LoadData": rng.uniform(0, 1, n),
            "Unprefixed": rng.normal(size=n),                              # not a compartment: not a feature
            "Image_Frame_DNA": 0.0,                                         # the spec's metadata-like names
            "Nuclei_Neighbors_FirstClosestObjectNumber_2_Mean": rng.normal(3, 1, n),
            "Cells_Label_Mean": "abc",                                      # non-numeric
            "Image_Count_Nuclei": rng.normal(20, 5, n),                     # kept
            "Nuclei_AreaShape_Area_Mean": rng.normal(30, 3, n),             # kept
            "Image_Constant": np.full(n, 64.0),                             # zero variance: dropped by both
            "Cells_Tiny": rng.normal(0.01, 0.002, n),                       # raw variance 4e-6 <= 1e-5, SD 20% of size
            "Cells_JustAbove": rng.choice([-0.004, 0.004], n),              # raw variance 1.6e-5 > 1e-5: kept by both
            "Image_Steady": rng.normal(1000.0, 1.0, n),                     # raw variance 1, SD 0.1% of size
            "Cytoplasm_Spiky": np.r_[np.zeros(n - 1), 1.0],                 # one real row at |z| = sqrt(n - 1) > 5
        })

    real, generated = table(n_real, 0), table(n_gen, 1000)
    return real, generated


def test_metadata_like_names():
    for name in ("Metadata_plate", "FileName_DNA", "PathName_ER", "ImageNumber", "ObjectNumber",
                 "ExecutionTime_03IdentifyPrimaryObjects", "ModuleError_02MeasureImageQuality", "Series_DNA",
                 "Frame_RNA", "Group_Index", "Group_Number", "URL_Mito"):
        assert is_metadata_like(name), name
    for name in ("Count_Nuclei", "Mean_Cells_Texture_Contrast_DNA_1_00_64", "ImageQuality_PowerLogLogSlope_DNA"):
        assert not is_metadata_like(name), name


def test_cleaner_drop_rules_and_kept_count():
    real, _ = _tables()
    real.loc[3, "Image_Count_Nuclei"] = np.nan  # one incomplete real row
    cleaner = FeatureCleaner.fit(real)  # the unit-free (relative) variance filter
    assert cleaner.columns == ["Image_Count_Nuclei", "Nuclei_AreaShape_Area_Mean", "Cells_Tiny", "Cells_JustAbove"]
    report = cleaner.report
    assert report["kept_features"] == 4 and report["n_inferred_features"] == 10
    assert report["dropped_columns"] == {"metadata_like": 2, "non_numeric": 1, "low_variance": 2, "outlier_z": 1}
    assert set(cleaner.dropped["low_variance"]) == {"Image_Constant", "Image_Steady"}
    assert cleaner.dropped["outlier_z"] == ["Cytoplasm_Spiky"]
    assert report["n_real_rows_dropped_nan"] == 1 and report["n_real_rows_used"] == 59
    # the paper's raw 1e-5 filter, kept as an option, drops the small-valued feature instead of the large one
    raw = FeatureCleaner.fit(real, variance_filter="raw")
    assert set(raw.dropped["low_variance"]) == {"Image_Constant", "Cells_Tiny"}
    assert "Image_Steady" in raw.columns and "Cells_Tiny" not in raw.columns
    assert report["kept_features_by_variance_filter"] == {"relative": 4, "raw": 4}
    assert report["low_variance_by_variance_filter"] == {"relative": 2, "raw": 2}
    # the scaler is scikit-learn's StandardScaler fitted on the complete real rows
    complete = real.drop(index=3)[cleaner.columns]
    scaler = StandardScaler().fit(complete)
    assert np.allclose(cleaner.mean, scaler.mean_) and np.allclose(cleaner.scale, scaler.scale_)


def test_outlier_rule_needs_enough_rows():
    # with 20 real rows one spike is at |z| = sqrt(19) = 4.36 <= 5: kept (the count is measured, not assumed)
    real, _ = _tables(n_real=20)
    assert "Cytoplasm_Spiky" in FeatureCleaner.fit(real).columns


def test_cleaner_is_fitted_on_real_only_and_reused_for_generated():
    real, generated = _tables()
    generated["Image_Count_Nuclei"] += 1000.0  # far-off generated rows must not move the real fit
    generated.loc[2, "Cells_JustAbove"] = np.inf
    cleaner = FeatureCleaner.fit(real)
    assert cleaner.columns == FeatureCleaner.fit(real.iloc[::-1]).columns
    assert np.allclose(cleaner.mean, real[cleaner.columns].mean())
    clean_gen, dropped = cleaner.transform(generated)
    assert list(dropped) == [2]
    assert len(clean_gen) == len(generated) - 1
    expected = StandardScaler().fit(real[cleaner.columns]).transform(generated.drop(index=2)[cleaner.columns])
    assert np.allclose(clean_gen[cleaner.columns].to_numpy(), expected)
    assert clean_gen["Metadata_site_id"].tolist() == generated.drop(index=2)["Metadata_site_id"].tolist()
    clean_real, _ = cleaner.transform(real)
    assert np.allclose(clean_real[cleaner.columns].mean(), 0) and np.allclose(clean_real[cleaner.columns].std(ddof=0), 1)
    # the real rows come out as pycytominer's own standardize gives them; bookkeeping stays out of clean tables
    from pycytominer import normalize

    expected = normalize(real, features=cleaner.columns, meta_features="infer", method="standardize")
    assert np.array_equal(clean_real[cleaner.columns].to_numpy(), expected[cleaner.columns].to_numpy())
    assert [c for c in clean_real.columns if c.startswith("Metadata_")] == ["Metadata_site_id"]


def test_cleaner_refuses_tables_outside_the_field_conventions():
    real, _ = _tables()
    old_style = real.rename(columns=lambda c: c if c.startswith("Metadata_") else c.split("_", 1)[-1])
    with pytest.raises(InputError, match=r"real\.parquet.*no feature columns.*pycytominer"):
        FeatureCleaner.fit(old_style, source="real.parquet")
    with pytest.raises(InputError, match="morphology.variance_filter"):
        FeatureCleaner.fit(real, variance_filter="cv")


def test_cleaner_saves_without_pickle_and_clean_writes_report(tmp_path):
    real, generated = _tables()
    generated.loc[5, "Image_Count_Nuclei"] = np.nan
    real.to_parquet(tmp_path / "real.parquet")
    generated.to_parquet(tmp_path / "gen.parquet")
    report = clean(tmp_path / "real.parquet", tmp_path / "gen.parquet", tmp_path / "out")
    assert report["kept_features"] == 4 and report["generated_rows_dropped_nan"] == ["s1005"]
    with np.load(tmp_path / "out" / "cleaner.npz", allow_pickle=False) as arrays:
        assert arrays["columns"].dtype.kind == "U" and arrays["mean"].shape == (4,)
    loaded = FeatureCleaner.load(tmp_path / "out" / "cleaner.npz", tmp_path / "out" / "cleaner.json")
    fitted = FeatureCleaner.fit(real)
    assert loaded.columns == fitted.columns and np.array_equal(loaded.mean, fitted.mean)
    saved = pd.read_parquet(tmp_path / "out" / "generated_clean.parquet")
    assert len(saved) == 19 and list(saved.columns[-4:]) == fitted.columns
    on_disk = json.loads((tmp_path / "out" / "cleaning_report.json").read_text())
    assert on_disk["kept_features"] == 4 and on_disk["n_generated_rows_dropped_nan"] == 1
    assert on_disk["kept_features_by_variance_filter"] == {"relative": 4, "raw": 4}
    with pytest.raises(InputError, match="missing"):
        loaded.transform(generated.drop(columns="Cells_JustAbove"))


def test_clean_applies_the_real_fit_to_every_other_source(tmp_path):
    real, generated = _tables()
    reconstructions = generated.iloc[:7].copy()
    reconstructions["Image_Count_Nuclei"] *= 3.0
    real.to_parquet(tmp_path / "real_image.parquet")
    generated.to_parquet(tmp_path / "generated_image.parquet")
    reconstructions.to_parquet(tmp_path / "reconstructions_image.parquet")
    report = clean(tmp_path / "real_image.parquet", tmp_path / "generated_image.parquet", tmp_path / "out",
                   also=[tmp_path / "reconstructions_image.parquet"])
    saved = pd.read_parquet(tmp_path / "out" / "reconstructions_clean.parquet")
    expected, _ = FeatureCleaner.fit(real).transform(reconstructions)
    assert report["n_reconstructions_rows_dropped_nan"] == 0 and len(saved) == 7
    pd.testing.assert_frame_equal(saved.reset_index(drop=True), expected.reset_index(drop=True))


def test_cleaner_refuses_when_every_real_row_has_nan():
    real, _ = _tables()
    real["Cytoplasm_X_Mean"] = np.nan
    with pytest.raises(InputError, match="Cytoplasm_X_Mean"):
        FeatureCleaner.fit(real)


# --------------------------------------------------------------------------------------------------
# real CellProfiler

needs_cellprofiler = pytest.mark.skipif(
    not os.access(CELLPROFILER, os.X_OK),
    reason=f"CellProfiler not installed at {CELLPROFILER}: run scripts/install_cellprofiler.sh "
           "(or set MORPHOTRUST_CELLPROFILER)")


def _run_all(chunks_dir, pipeline, out_dir):
    tables = []
    for data_file in sorted(Path(chunks_dir).glob("chunk_*.csv")):
        out = Path(out_dir) / data_file.name
        run_chunk(CELLPROFILER, pipeline, data_file, out, Path(out_dir) / f"{data_file.stem}.log")
        tables.append(out)
    return tables


@pytest.fixture(scope="module")
def demo_sites(tmp_path_factory):
    """Four demo sites (one per cell type) rendered by morphotrust.data at their native 128 px; the pipeline
    for the demo's 0.875 µm per pixel, as the workflow writes it."""
    from morphotrust.data.demo import demo_pixel_size_um, render_site

    work = tmp_path_factory.mktemp("demo")
    rows = []
    for i, cell_type in enumerate(("HEPG2", "HUVEC", "RPE", "U2OS")):
        site = render_site(cell_type, 1138, f"{cell_type}-01_1_B02_{i}", f"{cell_type}-01", 1)  # native 128 px
        path = work / f"{cell_type}.tif"
        write_site(path, site)
        rows.append({"Metadata_sample_id": f"demo-{cell_type}", "Metadata_cell_type": cell_type,
                     "Metadata_condition": f"{cell_type}:1138", "Metadata_image_path": str(path),
                     "Metadata_plate": 1, "Metadata_well": ("B02", "C03")[i % 2], "Metadata_site": i})
    manifest = work / "manifest.parquet"
    pd.DataFrame(rows).to_parquet(manifest)
    pipeline = work / "pipeline.cppipe"
    write_pipeline(PIPELINE, pipeline, pixel_size_um=demo_pixel_size_um(128), nuclei_diameter_um=(6, 30))
    return work, manifest, pipeline


def _pycytominer_runs_on(table: pd.DataFrame, features: list) -> None:
    """pycytominer's infer / aggregate / normalize / feature_select with their defaults on a merged table."""
    from pycytominer import aggregate, feature_select, normalize
    from pycytominer.cyto_utils import infer_cp_features

    inferred = infer_cp_features(table)
    assert set(inferred) == set(features) | {c for c in table.columns if c.startswith(("Cells_", "Nuclei_",
                                                                                           "Cytoplasm_"))}
    with_image = infer_cp_features(table, image_features=True)
    assert "Image_Count_Nuclei" in with_image and "Image_ImageQuality_PowerLogLogSlope_DNA" in with_image
    assert not any("ImageNumber" in c or "ExecutionTime" in c or "FileName" in c for c in with_image)
    metadata = infer_cp_features(table, metadata=True)
    assert {"Metadata_Plate", "Metadata_Well", "Metadata_ImageNumber", "Metadata_condition"} <= set(metadata)

    wells = aggregate(table, operation="median")  # strata Metadata_Plate, Metadata_Well; features="infer"
    assert len(wells) == table.groupby(["Metadata_Plate", "Metadata_Well"]).ngroups == 2
    assert set(wells.columns) == {"Metadata_Plate", "Metadata_Well", *inferred}
    normalized = normalize(table, features="infer", method="standardize")
    assert set(metadata) <= set(normalized.columns)
    varying = [c for c in inferred if table[c].std() > 1e-9]
    assert np.allclose(normalized[varying].mean(), 0, atol=1e-9)
    selected = feature_select(normalized, features="infer", operation=["variance_threshold", "drop_na_columns"])
    kept = infer_cp_features(selected)
    assert 1000 < len(kept) < len(inferred)  # constant features go, the rest stays
    assert set(metadata) <= set(selected.columns)


@pytest.mark.cellprofiler
@needs_cellprofiler
def test_cellprofiler_on_demo_sites_in_chunks(demo_sites):
    work, manifest, pipeline = demo_sites
    prepare("generated", manifest, work / "chunks", resolution=128, chunk_size=2, progress=False)
    tables = _run_all(work / "chunks", pipeline, work / "out")
    assert len(tables) == 2
    table = merge(work / "chunks" / "sites.parquet", tables, work / "generated_image.parquet")
    assert table["Metadata_sample_id"].tolist() == [f"demo-{c}" for c in ("HEPG2", "HUVEC", "RPE", "U2OS")]
    for column in QC_COLUMNS:
        assert table[image_feature(column)].notna().all(), column
    assert (table["Image_ImageQuality_PercentMaximal_DNA"] < 5).all()
    features = [c for c in table.columns if c.endswith(("_Mean", "_Median", "_StDev"))
                and c.startswith(("Cells_", "Nuclei_", "Cytoplasm_"))]
    assert len(features) > 2000
    for family in ("Intensity", "AreaShape", "Texture", "RadialDistribution", "Neighbors"):
        assert any(f"_{family}_" in c for c in features), family
    assert any(c.startswith("Image_Granularity_") for c in table.columns)
    assert any(c.startswith("Image_AreaOccupied_") for c in table.columns)
    for stain in STAIN_NAMES:
        assert f"Cells_Intensity_MeanIntensity_{stain}_Mean" in table.columns
    counts = dict(zip(table["Metadata_cell_type"], table["Image_Count_Nuclei"]))
    # dense small HEPG2 nuclei vs sparse large U2OS cells (44 vs 7 cells per demo field)
    assert counts["HEPG2"] > 2 * counts["U2OS"] > 0
    assert (table["Image_Count_Cells"] == table["Image_Count_Nuclei"]).all()
    assert (table["Cells_AreaShape_Area_Mean"] > table["Nuclei_AreaShape_Area_Mean"]).all()
    # every column is a compartment or Image_ measurement or Metadata_, none CellProfiler's raw names
    assert all(c.startswith(("Cells_", "Nuclei_", "Cytoplasm_", "Image_", "Metadata_")) for c in table.columns)
    _pycytominer_runs_on(table, features)

    # splitting into chunks does not change any measurement
    prepare("generated", manifest, work / "whole", resolution=128, chunk_size=4, progress=False)
    whole = merge(work / "whole" / "sites.parquet", _run_all(work / "whole", pipeline, work / "out_whole"),
                  work / "whole.parquet")
    numeric = [c for c in features + ["Image_Count_Nuclei"]]
    assert np.allclose(table[numeric].to_numpy(float), whole[numeric].to_numpy(float), rtol=1e-6, atol=1e-9,
                       equal_nan=True)

    # the .npy hand-over measures exactly what CellProfiler measures on the PNGs itself
    bare = work / "bare"
    subprocess.run(cellprofiler_command(CELLPROFILER, pipeline, work / "whole" / "chunk_001.csv", bare), check=True,
                   capture_output=True)
    bare_table = pd.read_csv(bare / "Image.csv").sort_values("Metadata_SiteKey").reset_index(drop=True)
    ours = pd.read_csv(work / "out_whole" / "chunk_001.csv").sort_values("Metadata_SiteKey").reset_index(drop=True)
    measured = [c for c in bare_table.columns if bare_table[c].dtype.kind in "fi"
                and not c.startswith(("ExecutionTime_", "Scaling_", "ImageQuality_Scaling_"))]
    assert len(measured) > 2000 and set(measured) <= set(ours.columns)
    pd.testing.assert_frame_equal(ours[measured], bare_table[measured], check_exact=False, rtol=1e-9, atol=1e-12)


@pytest.mark.cellprofiler
@needs_cellprofiler
def test_cellprofiler_failure_fails_the_job_with_its_log(demo_sites, tmp_path):
    """A chunk with an unreadable image: `morphotrust morphology run-chunk` exits 1 and prints CellProfiler's error
    and the end of its output. Run under CellProfiler's own Python 3.9 (no pandas/numpy from morphotrust's env), as
    the chunk jobs run inside envs/cellprofiler.yaml with --use-conda."""
    work, manifest, pipeline = demo_sites
    chunks = tmp_path / "chunks"
    sites = prepare("generated", manifest, chunks, resolution=128, chunk_size=4, progress=False)
    (chunks / "images" / f"{sites['Metadata_SiteKey'][0]}_w3.png").write_bytes(b"not a png")
    out, log = tmp_path / "out" / "chunk_001.csv", tmp_path / "chunk.log"
    python = Path(CELLPROFILER).parent / "python"
    result = subprocess.run(
        [str(python), "-m", "morphotrust", "morphology", "run-chunk", "--cellprofiler", CELLPROFILER,
         "--pipeline", str(pipeline), "--data-file", str(chunks / "chunk_001.csv"), "--out", str(out),
         "--log", str(log)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert result.returncode == 1, result.stderr
    assert "failed: site generated000000: its images could not be loaded (LoadData: OSError" in result.stderr
    assert "Could not load the file" in result.stderr  # CellProfiler's own words
    output = cellprofiler_output_path(log)
    assert f"full output: {output}" in result.stderr and "Could not load the file" in output.read_text()
    assert "its images could not be loaded" in log.read_text()
    assert not out.exists() and not list(out.parent.glob(".*cellprofiler"))
    with pytest.raises(CellProfilerError, match="could not be loaded"):
        run_chunk(CELLPROFILER, pipeline, chunks / "chunk_001.csv", out, log)


def _run_chunk_command(chunks, pipeline, out, log) -> list:
    return [str(Path(CELLPROFILER).parent / "python"), "-m", "morphotrust", "morphology", "run-chunk",
            "--cellprofiler", CELLPROFILER, "--pipeline", str(pipeline), "--data-file", str(chunks / "chunk_001.csv"),
            "--out", str(out), "--log", str(log)]


def _cellprofiler_running(scratch: Path) -> list:
    """pids of the processes whose command line names `scratch` (CellProfiler working there, or a job's folder)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(scratch) in (proc / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(proc.name))
        except OSError:
            pass
    return [pid for pid in found if pid != os.getpid()]


def _wait_for_cellprofiler(scratch: Path, timeout=120) -> None:
    """Until CellProfiler runs in `scratch` (its command line names it), and a second more."""
    deadline = time.monotonic() + timeout
    while not _cellprofiler_running(scratch):
        assert time.monotonic() < deadline, "CellProfiler did not start"
        time.sleep(0.2)
    time.sleep(1)


@pytest.mark.cellprofiler
@needs_cellprofiler
def test_bad_generations_are_measured_or_recorded_as_failed_without_failing_the_chunk(demo_sites, tmp_path):
    """Issue 23: a blank, a constant and a two-valued image (collapsed generator checkpoints draw them) in one chunk
    with a real site. CellProfiler cannot threshold the two-valued one in three classes; the chunk still succeeds,
    every site has its row, the two-valued one carries CellProfiler's error, and the segmentation gate records the
    bad ones as failed while the real site passes."""
    work, manifest, pipeline = demo_sites
    real = pd.read_parquet(manifest).iloc[:1]
    rng = np.random.default_rng(0)
    bad = {"blank": np.zeros((6, 128, 128), np.uint8), "constant": np.full((6, 128, 128), 90, np.uint8),
           "two-valued": (rng.random((6, 128, 128)) > 0.5).astype(np.uint8) * 200}
    rows = [real]
    for name, image in bad.items():
        write_site(tmp_path / f"{name}.tif", image)
        rows.append(real.assign(Metadata_sample_id=name, Metadata_image_path=str(tmp_path / f"{name}.tif")))
    pd.concat(rows, ignore_index=True).to_parquet(tmp_path / "manifest.parquet")
    chunks = tmp_path / "chunks"
    prepare("generated", tmp_path / "manifest.parquet", chunks, resolution=128, chunk_size=4, progress=False)
    out, log = tmp_path / "out" / "chunk_001.csv", tmp_path / "chunk.log"
    result = subprocess.run(_run_chunk_command(chunks, pipeline, out, log), capture_output=True, text=True,
                            timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert result.returncode == 0, result.stderr + log.read_text()
    assert "1 could not be measured" in result.stdout
    assert "IdentifySecondaryObjects: ValueError: The input image has only 2 different values" in log.read_text()

    from morphotrust.morphology.sites import merge

    table = merge(chunks / "sites.parquet", [out], tmp_path / "generated_image.parquet",
                  gate={"pixel_size_um": 0.875, "nuclei_diameter_um": (6, 30)}).set_index("Metadata_sample_id")
    assert list(table.index) == [real["Metadata_sample_id"].iloc[0], "blank", "constant", "two-valued"]
    failure = table["Metadata_ModuleError_Message"].fillna("")
    assert failure["two-valued"].startswith("IdentifySecondaryObjects: ValueError: The input image has only 2")
    assert (failure.drop("two-valued") == "").all()
    ok = table["Metadata_segmentation_ok"]
    assert ok.iloc[0] and not ok["blank"] and not ok["constant"] and not ok["two-valued"]
    assert table.loc["two-valued", "Metadata_segmentation_problem"].startswith("CellProfiler could not measure it")
    assert table.loc["blank", "Image_Count_Nuclei"] == 0  # measured: nothing found
    assert not list(out.parent.glob(".*cellprofiler"))


@pytest.mark.cellprofiler
@needs_cellprofiler
def test_ctrl_c_stops_a_chunk_job_with_one_line_and_no_scratch(demo_sites, tmp_path):
    """Issue 26: SIGINT (Ctrl-C) while CellProfiler measures: CellProfiler is killed, the scratch folder removed,
    the job dies of SIGINT and its log (what Snakemake shows for a stopped job) is one line, not a traceback."""
    work, manifest, pipeline = demo_sites
    chunks = tmp_path / "chunks"
    prepare("generated", manifest, chunks, resolution=128, chunk_size=4, progress=False)
    out, log = tmp_path / "out" / "chunk_001.csv", tmp_path / "chunk.log"
    scratch = out.parent / ".chunk_001.csv.cellprofiler"
    job = subprocess.Popen(_run_chunk_command(chunks, pipeline, out, log), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    _wait_for_cellprofiler(scratch)
    cellprofiler = _cellprofiler_running(scratch)
    job.send_signal(signal.SIGINT)
    _, stderr = job.communicate(timeout=60)
    assert job.returncode == -signal.SIGINT
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    lines = log.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("morphotrust: stopped (SIGINT) after "), lines
    assert "run Snakemake again to measure this chunk" in lines[0]
    assert all(_gone(pid) for pid in cellprofiler) and not scratch.exists() and not out.exists()


@pytest.mark.cellprofiler
@needs_cellprofiler
def test_after_kill_9_of_snakemake_no_cellprofiler_keeps_writing_and_a_rerun_redoes_the_chunk(demo_sites, tmp_path):
    """Issue 26: Snakemake killed with SIGKILL while a chunk job runs: the orphaned job notices (its shell lost its
    parent), kills CellProfiler and removes its scratch folder, so nothing writes behind the next run, and that
    run plans the chunk again instead of saying "Nothing to be done". A one-rule Snakefile runs the real job."""
    work, manifest, pipeline = demo_sites
    chunks = tmp_path / "chunks"
    prepare("generated", manifest, chunks, resolution=128, chunk_size=4, progress=False)
    command = " ".join(_run_chunk_command(chunks, pipeline, "{output}", "{log}"))
    (tmp_path / "Snakefile").write_text(  # absolute paths: CellProfiler's command line names the scratch folder
        f'rule chunk:\n    output: "{tmp_path}/out/chunk_001.csv"\n    log: "{tmp_path}/logs/chunk_001.log"\n'
        f'    shell: "{command}"\n')
    snakemake = [sys.executable, "-m", "snakemake", "--snakefile", str(tmp_path / "Snakefile"), "--directory",
                 str(tmp_path), "--cores", "1"]
    scratch = tmp_path / "out" / ".chunk_001.csv.cellprofiler"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    first = subprocess.Popen(snakemake, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                             start_new_session=True)
    _wait_for_cellprofiler(scratch)
    running = _cellprofiler_running(scratch)
    first.kill()  # kill -9 of Snakemake alone: its job shell and the job are orphaned
    first.wait()
    assert all(_gone(pid, seconds=30) for pid in running), "CellProfiler kept running"
    deadline = time.monotonic() + 30
    while _cellprofiler_running(tmp_path):  # the job shell and the job itself (their command lines name tmp_path)
        assert time.monotonic() < deadline, "the orphaned job kept running"
        time.sleep(0.2)
    assert not scratch.exists() and not (tmp_path / "out" / "chunk_001.csv").exists()
    assert "the Snakemake that started this job is gone" in (tmp_path / "logs" / "chunk_001.log").read_text()
    rerun = subprocess.run([*snakemake, "-n"], capture_output=True, text=True, env=env)
    assert "Nothing to be done" not in rerun.stdout + rerun.stderr
    assert "rule chunk" in rerun.stdout + rerun.stderr, rerun.stdout + rerun.stderr


@pytest.mark.cellprofiler
@needs_cellprofiler
def test_pipeline_is_what_the_pinned_cellprofiler_writes(tmp_path):
    """The committed .cppipe loads in CellProfiler's own Pipeline class without errors, every module's
    settings validate, and saving it again gives the same file (so the GUI opens it as is)."""
    python = Path(CELLPROFILER).parent / "python"
    # LoadData's validation reads its CSV to learn the image names the other modules use
    columns = [f"{kind}_{stain}" for stain in STAIN_NAMES for kind in ("FileName", "PathName")]
    (tmp_path / "load_data.csv").write_text(",".join(columns + ["Metadata_SiteKey"]) + "\n"
                                            + ",".join(["a.png", "images"] * 6 + ["s1"]) + "\n")
    script = f"""
import io, sys
import cellprofiler_core.preferences as prefs
prefs.set_headless()
prefs.set_default_image_directory({str(tmp_path)!r})
from cellprofiler_core.pipeline import Pipeline
errors = []
pipeline = Pipeline()
pipeline.add_listener(lambda p, e: errors.append(e) if type(e).__name__ == "LoadException" else None)
pipeline.load({str(PIPELINE)!r})
assert not errors, errors
for module in pipeline.modules():
    module.test_valid(pipeline)
out = io.StringIO()
pipeline.dump(out)
sys.stdout.write(out.getvalue())
"""
    result = subprocess.run([str(python), "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == PIPELINE.read_text()
