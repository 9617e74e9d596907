"""The light QC pass (resources/cellprofiler/qc_light.cppipe) and the segmentation sanity gate.

The gate's rules are checked on small tables; the QC pipeline runs for real (headless CellProfiler, marker
`cellprofiler`) on a handful of demo sites, whose nuclei are known (morphotrust.data.demo.render_nuclei).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from morphotrust.errors import InputError
from morphotrust.images import write_site
from morphotrust.morphology.cellprofiler import run_chunk
from morphotrust.morphology.gate import (COUNT_COLUMN, DIAMETER_COLUMN, OK, PROBLEM, check_source, gate_settings,
                                         gate_sites)
from morphotrust.morphology.pipeline import write_pipeline
from morphotrust.morphology.sites import merge_tables, prepare, qc_merge

ROOT = Path(__file__).resolve().parents[1]
QC_PIPELINE = ROOT / "resources" / "cellprofiler" / "qc_light.cppipe"
CELLPROFILER = os.environ.get("MORPHOTRUST_CELLPROFILER", str(ROOT / ".venv-cellprofiler" / "bin" / "cellprofiler"))
needs_cellprofiler = pytest.mark.skipif(not os.access(CELLPROFILER, os.X_OK),
                                        reason=f"CellProfiler not installed at {CELLPROFILER}")
RANGE_UM = (6.0, 30.0)


def _table(counts, diameters_px):
    return pd.DataFrame({"Metadata_site_id": [f"s{i}" for i in range(len(counts))], COUNT_COLUMN: counts,
                         DIAMETER_COLUMN: diameters_px})


def test_gate_flags_count_and_diameter_outside_the_range():
    gated = gate_sites(_table([20, 0, 15, 15, 500], [14.0, np.nan, 3.0, 60.0, 14.0]), pixel_size_um=0.875,
                       nuclei_diameter_um=RANGE_UM, gate={"max_nuclei": 400})
    assert gated[OK].tolist() == [True, False, False, False, False]
    assert "0 nuclei < 1" in gated[PROBLEM][1]
    assert "2.6 µm < 6" in gated[PROBLEM][2] and "52.5 µm > 30" in gated[PROBLEM][3]
    assert "500 nuclei > 400" in gated[PROBLEM][4]
    with pytest.raises(InputError, match="morphology.gate"):
        gate_settings({"max_failed": 0.5})


def test_stop_names_resolution_or_pixel_size():
    # at 4 µm per pixel a 6-µm nucleus is 1.5 px: the resolution is too low, whatever was found
    coarse = gate_sites(_table([10, 9, 3], [4.0, 5.0, 6.0]), pixel_size_um=4.0, nuclei_diameter_um=RANGE_UM)
    assert not coarse[OK].any() and "too coarse" in coarse[PROBLEM][0]
    with pytest.raises(InputError, match="morphology.resolution"):
        check_source(coarse, source="real", pixel_size_um=4.0, nuclei_diameter_um=RANGE_UM)
    # nuclei 40 px across at a claimed 1.5 µm/px measure 60 µm: the pixel size is wrong
    wrong = gate_sites(_table([10, 12, 9], [40.0, 38.0, 41.0]), pixel_size_um=1.5, nuclei_diameter_um=RANGE_UM)
    with pytest.raises(InputError, match="morphology.pixel_size_um"):
        check_source(wrong, source="real", pixel_size_um=1.5, nuclei_diameter_um=RANGE_UM)
    # one failure in three is not "most" at the default max_failed_fraction 0.5; at 0.2 it stops
    mixed = gate_sites(_table([10, 12, 0], [14.0, 15.0, np.nan]), pixel_size_um=0.875, nuclei_diameter_um=RANGE_UM)
    assert check_source(mixed, source="real", pixel_size_um=0.875, nuclei_diameter_um=RANGE_UM)["failed"] == 1
    with pytest.raises(InputError, match="1 of 3 real sites"):
        check_source(mixed, source="real", pixel_size_um=0.875, nuclei_diameter_um=RANGE_UM,
                     gate={"max_failed_fraction": 0.2})


@pytest.fixture(scope="module")
def demo_plate(tmp_path_factory):
    """Six demo sites of one plate in six wells, ingested like data.ingest does (canonical TIFF + sites table)."""
    from morphotrust.data.demo import count_nuclei, render_nuclei, render_site

    work = tmp_path_factory.mktemp("qc")
    rows, truth = [], []
    for i, (cell_type, well) in enumerate([("HEPG2", "B02"), ("HUVEC", "B03"), ("RPE", "C02"), ("U2OS", "C03"),
                                           ("HEPG2", "D04"), ("U2OS", "D05")]):
        site_id = f"DEMO-01_1_{well}_1"
        path = work / f"{well}.tif"
        write_site(path, render_site(cell_type, 1138, site_id, "DEMO-01", 1))  # native 128 px
        truth.append(count_nuclei(render_nuclei(cell_type, 1138, site_id)))
        rows.append({"Metadata_site_id": site_id, "Metadata_experiment": "DEMO-01", "Metadata_plate": 1,
                     "Metadata_well": well, "Metadata_site": 1, "Metadata_cell_type": cell_type,
                     "Metadata_sirna_id": 1138, "Metadata_image_path": str(path), "Metadata_synthetic": True})
    sites = work / "sites.parquet"
    pd.DataFrame(rows).to_parquet(sites)
    return work, sites, np.array(truth)


def _qc_run(work: Path, sites, resolution: int, pixel_size_um: float) -> Path:
    """prepare (one chunk per plate) + the light pipeline + run-chunk, as the workflow's QC rules do."""
    plate_dir = work / f"plate_{resolution}_{pixel_size_um:g}"
    prepare("qc", sites, plate_dir / "chunks", resolution=resolution, chunk_size=1_000_000, native_px=128,
            progress=False)
    pipeline = plate_dir / "qc_pipeline.cppipe"
    write_pipeline(QC_PIPELINE, pipeline, pixel_size_um=pixel_size_um, nuclei_diameter_um=RANGE_UM, light=True)
    run_chunk(CELLPROFILER, pipeline, plate_dir / "chunks" / "chunk_001.csv", plate_dir / "image.csv",
              plate_dir / "cellprofiler.log")
    return plate_dir


@pytest.mark.cellprofiler
@needs_cellprofiler
def test_qc_pass_counts_demo_nuclei_and_passes_the_gate(demo_plate):
    work, sites, truth = demo_plate
    plate_dir = _qc_run(work, sites, 128, 0.875)
    table, summary = qc_merge([plate_dir], work / "qc_image.parquet", pixel_size_um=0.875,
                              nuclei_diameter_um=RANGE_UM)
    assert summary["failed"] == 0 and table[OK].all()
    counts = table[COUNT_COLUMN].to_numpy(float)
    # nuclei touching the border are discarded by CellProfiler and left out of the truth alike
    assert abs(counts.sum() - truth.sum()) <= 0.1 * truth.sum(), (counts, truth)
    assert np.all(np.abs(counts - truth) <= np.maximum(2, 0.25 * truth)), (counts, truth)
    for stain in ("DNA", "Golgi"):
        assert table[f"Image_ImageQuality_PowerLogLogSlope_{stain}"].notna().all()
        assert table[f"Image_ImageQuality_PercentMaximal_{stain}"].notna().all()


@pytest.mark.cellprofiler
@needs_cellprofiler
def test_gate_stops_on_a_wrong_pixel_size(demo_plate):
    """The demo's 0.875 µm/px claimed as 5 µm/px: every nucleus measures 5.7x its size, beyond 30 µm."""
    work, sites, _ = demo_plate
    plate_dir = _qc_run(work, sites, 128, 5.0)
    with pytest.raises(InputError, match="morphology.pixel_size_um"):
        qc_merge([plate_dir], work / "wrong.parquet", pixel_size_um=5.0, nuclei_diameter_um=RANGE_UM)
    assert not (work / "wrong.parquet").exists()
    gated = gate_sites(merge_tables(plate_dir / "chunks" / "sites.parquet", [plate_dir / "image.csv"]),
                       pixel_size_um=5.0, nuclei_diameter_um=RANGE_UM)
    assert (~gated[OK]).mean() > 0.5


@pytest.mark.cellprofiler
@needs_cellprofiler
def test_gate_stops_when_the_resolution_is_too_low(demo_plate):
    """The 112-µm demo field measured at 16 px (7 µm/px): a nucleus is one or two pixels."""
    work, sites, _ = demo_plate
    plate_dir = _qc_run(work, sites, 16, 7.0)
    with pytest.raises(InputError, match="morphology.resolution"):
        qc_merge([plate_dir], work / "coarse.parquet", pixel_size_um=7.0, nuclei_diameter_um=RANGE_UM)
