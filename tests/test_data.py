"""Data stage: RxRx1 reader (both layouts, every bad input), ingest, merge, and the synthetic demo."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml
from PIL import Image
from scipy import ndimage as ndi

from morphotrust.config import schema_defaults
from morphotrust.data import (METADATA_COLUMNS, data_root, plan_metadata, plate_wildcards,
                              read_metadata)
from morphotrust.data import demo
from morphotrust.data.cli import cli
from morphotrust.data.ingest import QC_COLUMNS, SITES_COLUMNS, ingest_plate, merge
from morphotrust.errors import InputError
from morphotrust.images import read_site, resize_site

REPO = Path(__file__).resolve().parents[1]
SIZE = 16  # tiny images keep the reader tests fast

DEMO_DEFAULTS = schema_defaults("data", "demo")  # the schema is the one place defaults are written


# ---------------------------------------------------------------------------------------------------
# tiny RxRx1 folders


def metadata_rows(experiment="HUVEC-01", plate=1, wells=("B02", "C03"), sites=(1, 2)):
    rows = []
    for i, well in enumerate(wells):
        for site in sites:
            sirna_id = 1138 if i == 0 else i
            rows.append({"site_id": f"{experiment}_{plate}_{well}_{site}", "well_id": f"{experiment}_{plate}_{well}",
                         "cell_type": experiment.split("-")[0], "dataset": "train", "experiment": experiment,
                         "plate": plate, "well": well, "site": site,
                         "well_type": "negative_control" if sirna_id == 1138 else "treatment",
                         "sirna": "EMPTY" if sirna_id == 1138 else f"s{1000 + i}", "sirna_id": sirna_id})
    return rows


def site_image(site_id: str) -> np.ndarray:
    seed = sum(site_id.encode())
    return np.random.default_rng(seed).integers(0, 255, (6, SIZE, SIZE), dtype=np.uint8)


def make_rxrx1(root: Path, layout="png", rows=None, tiff_axes="CYX", suffix=".tif") -> Path:
    """Write metadata.csv and the images of `rows` in the given layout; returns root."""
    rows = rows if rows is not None else metadata_rows()
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=METADATA_COLUMNS).to_csv(root / "metadata.csv", index=False)
    for row in rows:
        folder = root / "images" / row["experiment"] / f"Plate{row['plate']}"
        folder.mkdir(parents=True, exist_ok=True)
        image = site_image(row["site_id"])
        if layout == "png":
            for c in range(6):
                Image.fromarray(image[c]).save(folder / f"{row['well']}_s{row['site']}_w{c + 1}.png")
        else:
            tifffile.imwrite(folder / f"{row['well']}_s{row['site']}{suffix}",
                             image if tiff_axes == "CYX" else np.moveaxis(image, 0, -1))
    return root


def run_ingest(root, tmp_path, experiment="HUVEC-01", plate=1, **kwargs):
    out = tmp_path / "out"
    return ingest_plate(root, experiment, plate, sites_dir=out / "sites", table_path=out / "sites.parquet",
                        qc_path=out / "qc.csv", progress=False, **kwargs)


def ingest_and_merge(root, tmp_path, plates=(("HUVEC-01", 1),), on_bad_site="stop", **kwargs):
    """Every plate's ingest, then the merge that decides (as the workflow's data_ingest_plate + data_merge)."""
    tables, qcs = [], []
    for experiment, plate in plates:
        out = tmp_path / "out" / experiment / f"Plate{plate}"
        ingest_plate(root, experiment, plate, sites_dir=out / "sites", table_path=out / "sites.parquet",
                     qc_path=out / "qc.csv", progress=False, on_bad_site=on_bad_site, **kwargs)
        tables.append(out / "sites.parquet")
        qcs.append(out / "qc.csv")
    return merge(tables, qcs, sites_path=tmp_path / "out" / "sites.parquet", qc_path=tmp_path / "out" / "qc.csv",
                 root=root, on_bad_site=on_bad_site)


# ---------------------------------------------------------------------------------------------------
# reader: both layouts


@pytest.mark.parametrize("layout, axes, suffix", [("png", None, None), ("tiff", "CYX", ".tif"),
                                                  ("tiff", "YXC", ".tiff")])
@pytest.mark.parametrize("configured", ["auto", "exact"])
def test_ingest_reads_both_layouts(tmp_path, layout, axes, suffix, configured):
    root = make_rxrx1(tmp_path / "rxrx1", layout, tiff_axes=axes, suffix=suffix)
    sites, qc = run_ingest(root, tmp_path, layout="auto" if configured == "auto" else layout)
    assert list(sites.columns) == SITES_COLUMNS
    assert len(sites) == 4 and qc.empty and list(qc.columns) == QC_COLUMNS
    assert not sites["Metadata_synthetic"].any()
    for row in sites.itertuples():
        image = read_site(row.Metadata_image_path)
        assert image.dtype == np.uint8 and image.shape == (6, SIZE, SIZE)
        np.testing.assert_array_equal(image, site_image(row.Metadata_site_id))
    assert (sites[["Metadata_height", "Metadata_width"]] == SIZE).all().all()
    written = pd.read_parquet(tmp_path / "out" / "sites.parquet")
    pd.testing.assert_frame_equal(written, sites)
    assert not [p for p in (tmp_path / "out").rglob(".*")]  # no temporary files left behind


def _write_16_bit_site(root, planes, layout="png"):
    folder = root / "images" / "HUVEC-01" / "Plate1"
    if layout == "png":
        for c in range(6):
            Image.fromarray(planes[c]).save(folder / f"B02_s1_w{c + 1}.png")
    else:
        tifffile.imwrite(folder / "B02_s1.tif", planes)


@pytest.mark.parametrize("layout", ["png", "tiff"])
def test_ingest_converts_16_bit_sites_to_8_bits_and_records_it(tmp_path, layout):
    """16-bit sites become uint8 at ingest by the fixed v / 257 (inverse of x * 257); 8-bit sites are untouched."""
    root = make_rxrx1(tmp_path / "rxrx1", layout)
    eight_bit = site_image("HUVEC-01_1_B02_1")
    _write_16_bit_site(root, eight_bit.astype(np.uint16) * 257, layout)
    sites, qc = run_ingest(root, tmp_path, layout=layout)
    assert qc.empty and len(sites) == 4
    by_id = sites.set_index("Metadata_site_id")
    for site_id, row in by_id.iterrows():
        image = read_site(row["Metadata_image_path"])
        assert image.dtype == np.uint8
        np.testing.assert_array_equal(image, site_image(site_id))  # exact round trip for the 16-bit site too
    assert by_id.loc["HUVEC-01_1_B02_1", "Metadata_source_bit_depth"] == 16
    assert by_id.loc["HUVEC-01_1_B02_1", "Metadata_intensity_scale"] == pytest.approx(255 / 65535)
    others = by_id.drop(index="HUVEC-01_1_B02_1")
    assert (others["Metadata_source_bit_depth"] == 8).all() and (others["Metadata_intensity_scale"] == 1).all()
    assert (by_id["Metadata_clipped_fraction"] == 0).all()


def test_sixteen_bit_max_scales_and_clips(tmp_path):
    root = make_rxrx1(tmp_path / "rxrx1", rows=metadata_rows(wells=("B02",), sites=(1,)))
    planes = np.zeros((6, SIZE, SIZE), np.uint16)
    planes[:, 0, :4] = [0, 2048, 4095, 8000]  # 12-bit camera values, one above its range
    _write_16_bit_site(root, planes)
    sites, _ = run_ingest(root, tmp_path, sixteen_bit_max=4095)
    image = read_site(sites["Metadata_image_path"][0])
    assert image[:, 0, :4].tolist() == [[0, 128, 255, 255]] * 6  # round(2048 * 255 / 4095) = 128
    assert sites["Metadata_clipped_fraction"][0] == pytest.approx(1 / (SIZE * SIZE))


def test_refused_16_bit_sites_are_bad_sites(tmp_path):
    """data.sixteen_bit: refuse makes a 16-bit site a bad site, at ingest, naming the user's file: skip leaves
    it out and records it; stop stops the run at merge."""
    root = make_rxrx1(tmp_path / "rxrx1")
    _write_16_bit_site(root, site_image("x").astype(np.uint16) * 257)
    sites, qc = run_ingest(root, tmp_path, on_bad_site="skip", sixteen_bit="refuse")
    assert set(qc["problem"]) == {"bit_depth"} and len(qc) == 6 and (qc["action"] == "skipped").all()
    assert qc["file"].tolist() == [str(root / f"images/HUVEC-01/Plate1/B02_s1_w{c}.png") for c in range(1, 7)]
    assert "HUVEC-01_1_B02_1" not in set(sites["Metadata_site_id"]) and len(sites) == 3
    with pytest.raises(InputError, match=r"B02_s1_w1\.png: \[bit_depth\] is a 16-bit image"):
        ingest_and_merge(root, tmp_path, sixteen_bit="refuse")


def test_auto_layout_refuses_a_folder_with_both_layouts(tmp_path):
    root = make_rxrx1(tmp_path / "rxrx1", "png")
    tifffile.imwrite(root / "images" / "HUVEC-01" / "Plate1" / "B02_s1.tif", site_image("x"))
    with pytest.raises(InputError, match="both per-channel PNGs and six-channel TIFFs"):
        run_ingest(root, tmp_path, layout="auto")


# ---------------------------------------------------------------------------------------------------
# reader: every bad input is named; stop lists them all, skip records them all


def _missing_channel(root):
    path = root / "images/HUVEC-01/Plate1/C03_s2_w3.png"
    path.unlink()
    return path, "missing_channel", "HUVEC-01_1_C03_2"


def _unreadable(root):
    path = root / "images/HUVEC-01/Plate1/B02_s1_w5.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    return path, "unreadable", "HUVEC-01_1_B02_1"


def _truncated(root):
    path = root / "images/HUVEC-01/Plate1/B02_s2_w1.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (SIZE, SIZE), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:150])  # valid header, data cut short
    return path, "unreadable", "HUVEC-01_1_B02_2"


def _rgb(root):
    path = root / "images/HUVEC-01/Plate1/C03_s1_w2.png"
    Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(path)
    return path, "wrong_shape", "HUVEC-01_1_C03_1"


def _channel_size(root):
    path = root / "images/HUVEC-01/Plate1/C03_s1_w6.png"
    Image.fromarray(np.zeros((SIZE, SIZE * 2), np.uint8)).save(path)
    return path, "wrong_shape", "HUVEC-01_1_C03_1"


def _site_size(root):
    folder = root / "images/HUVEC-01/Plate1"
    for c in range(1, 7):
        Image.fromarray(np.zeros((SIZE // 2, SIZE // 2), np.uint8)).save(folder / f"B02_s2_w{c}.png")
    return folder / "B02_s2_w1.png", "wrong_shape", "HUVEC-01_1_B02_2"


def _row_without_images(root):
    rows = metadata_rows() + metadata_rows(wells=("D04",), sites=(1,))
    pd.DataFrame(rows, columns=METADATA_COLUMNS).to_csv(root / "metadata.csv", index=False)
    return root / "images/HUVEC-01/Plate1/D04_s1_w[1-6].png", "no_images", "HUVEC-01_1_D04_1"


def _image_without_row(root):
    path = root / "images/HUVEC-01/Plate1/E05_s1_w1.png"
    Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).save(path)
    return path, "no_metadata", ""


def _unrecognised_name(root):
    path = root / "images/HUVEC-01/Plate1/B02_s1_w7.png"
    Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).save(path)
    return path, "no_metadata", ""


BAD_PNG = [_missing_channel, _unreadable, _truncated, _rgb, _channel_size, _site_size, _row_without_images,
           _image_without_row, _unrecognised_name]


@pytest.mark.parametrize("spoil", BAD_PNG, ids=lambda f: f.__name__.strip("_"))
def test_bad_png_input_stops_naming_it(tmp_path, spoil):
    root = make_rxrx1(tmp_path / "rxrx1", "png")
    path, problem, site_id = spoil(root)
    with pytest.raises(InputError) as error:
        ingest_and_merge(root, tmp_path, on_bad_site="stop")
    message = str(error.value)
    assert str(path) in message and f"[{problem}]" in message
    if site_id:
        line = 2 + [r["site_id"] for r in metadata_rows() + metadata_rows(wells=("D04",), sites=(1,))].index(site_id)
        assert f"site {site_id}" in message and f"metadata.csv line {line}" in message
    assert "data.on_bad_site: skip" in message
    assert not (tmp_path / "out" / "sites.parquet").exists()
    # the plate job itself succeeded, recorded the problem and wrote no site
    qc = pd.read_csv(tmp_path / "out" / "HUVEC-01" / "Plate1" / "qc.csv")
    assert problem in set(qc["problem"]) and set(qc["action"]) == {"stopped"}
    assert not list((tmp_path / "out" / "HUVEC-01" / "Plate1" / "sites").iterdir())


@pytest.mark.parametrize("spoil", BAD_PNG, ids=lambda f: f.__name__.strip("_"))
def test_bad_png_input_is_skipped_and_recorded(tmp_path, spoil):
    root = make_rxrx1(tmp_path / "rxrx1", "png")
    path, problem, site_id = spoil(root)
    sites, qc = run_ingest(root, tmp_path, on_bad_site="skip")
    recorded = qc[(qc["file"] == str(path)) & (qc["problem"] == problem)]
    assert len(recorded) == 1 and (recorded["action"] == "skipped").all()
    assert recorded["site_id"].iloc[0] == site_id
    good = {r["site_id"] for r in metadata_rows()} - {site_id}
    assert set(sites["Metadata_site_id"]) == good
    assert len(qc) == 1  # nothing else reported
    on_disk = pd.read_csv(tmp_path / "out" / "qc.csv", keep_default_na=False)
    assert list(on_disk.columns) == QC_COLUMNS and len(on_disk) == 1


@pytest.mark.parametrize("shape", [(5, SIZE, SIZE), (SIZE, SIZE), (2, 6, SIZE, SIZE)])
def test_wrong_shaped_tiff(tmp_path, shape):
    root = make_rxrx1(tmp_path / "rxrx1", "tiff")
    path = root / "images/HUVEC-01/Plate1/C03_s2.tif"
    tifffile.imwrite(path, np.zeros(shape, np.uint8))
    with pytest.raises(InputError, match=r"C03_s2\.tif: \[wrong_shape\].*\(6, H, W\) or \(H, W, 6\)"):
        ingest_and_merge(root, tmp_path, layout="tiff")
    sites, qc = run_ingest(root, tmp_path, layout="tiff", on_bad_site="skip")
    assert qc["problem"].tolist() == ["wrong_shape"] and len(sites) == 3


def test_tiff_bad_inputs(tmp_path):
    root = make_rxrx1(tmp_path / "rxrx1", "tiff")
    folder = root / "images/HUVEC-01/Plate1"
    (folder / "C03_s1.tif").write_bytes(b"II*\x00garbage")
    (folder / "B02_s2.tif").unlink()
    tifffile.imwrite(folder / "F06_s1.tif", site_image("x"))
    with pytest.raises(InputError) as error:
        ingest_and_merge(root, tmp_path, layout="tiff")
    message = str(error.value)
    assert "3 problem(s)" in message
    for name, problem in (("C03_s1.tif", "unreadable"), ("B02_s2.tif", "no_images"), ("F06_s1.tif", "no_metadata")):
        assert f"{folder / name}: [{problem}]" in message


def test_stop_lists_every_problem_in_one_message(tmp_path):
    root = make_rxrx1(tmp_path / "rxrx1", "png")
    spoiled = [f(root) for f in (_missing_channel, _unreadable, _truncated, _image_without_row)]
    with pytest.raises(InputError) as error:
        ingest_and_merge(root, tmp_path)
    message = str(error.value)
    assert "4 problem(s)" in message
    for path, problem, _ in spoiled:
        assert f"{path}: [{problem}]" in message


def test_stop_gathers_every_plate_grouped_and_counted(tmp_path):
    """on_bad_site: stop lists the problems of every plate in one message, grouped by plate, with a count per
    problem type; good plates are ingested meanwhile (the same time as ingest)."""
    rows = [r for e in ("HUVEC-01", "HUVEC-02") for p in (1, 2) for r in metadata_rows(experiment=e, plate=p)]
    root = make_rxrx1(tmp_path / "rxrx1", rows=rows)
    (root / "images/HUVEC-01/Plate1/B02_s1_w3.png").unlink()
    (root / "images/HUVEC-01/Plate1/C03_s2_w6.png").unlink()
    (root / "images/HUVEC-02/Plate2/B02_s2_w1.png").write_bytes(b"not a png")
    orphan = root / "images/HUVEC-03/Plate1"
    orphan.mkdir(parents=True)
    Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).save(orphan / "B02_s1_w1.png")
    plates = [("HUVEC-01", 1), ("HUVEC-01", 2), ("HUVEC-02", 1), ("HUVEC-02", 2)]
    with pytest.raises(InputError) as error:
        ingest_and_merge(root, tmp_path, plates=plates)
    message = str(error.value)
    assert "4 problem(s) on 2 of 4 plate(s) and in the images folder" in message
    assert "Per problem type: missing_channel 2, no_metadata 1, unreadable 1" in message
    assert "  HUVEC-01/Plate1: 2 problem(s) (missing_channel 2)" in message
    assert "  HUVEC-02/Plate2: 1 problem(s) (unreadable 1)" in message
    assert "  image folders no metadata row refers to: 1 problem(s) (no_metadata 1)" in message
    assert message.index("HUVEC-01/Plate1:") < message.index("HUVEC-02/Plate2:")
    assert "HUVEC-01/Plate2:" not in message and "HUVEC-02/Plate1:" not in message
    for path in (root / "images/HUVEC-01/Plate1/B02_s1_w3.png", root / "images/HUVEC-02/Plate2/B02_s2_w1.png",
                 orphan.parent):  # an experiment folder with no metadata row
        assert f"{path}: [" in message
    good = tmp_path / "out" / "HUVEC-01" / "Plate2" / "sites"
    assert len(list(good.glob("*.tif"))) == 4  # the good plates were ingested meanwhile
    # skip mode: the same problems, every one recorded in the merged QC table
    sites = ingest_and_merge(root, tmp_path, plates=plates, on_bad_site="skip")
    qc = pd.read_csv(tmp_path / "out" / "qc.csv")
    assert len(sites) == 16 - 3 and len(qc) == 4 and set(qc["action"]) == {"skipped"}


def test_missing_plate_folder_reports_every_row(tmp_path):
    root = make_rxrx1(tmp_path / "rxrx1", "png")
    for path in (root / "images/HUVEC-01/Plate1").iterdir():
        path.unlink()
    (root / "images/HUVEC-01/Plate1").rmdir()
    sites, qc = run_ingest(root, tmp_path, on_bad_site="skip")
    assert sites.empty and (qc["problem"] == "no_images").sum() == 4
    assert qc["detail"].str.contains("does not exist").all()
    assert (tmp_path / "out" / "sites").is_dir()  # the (empty) output folder exists for Snakemake


# ---------------------------------------------------------------------------------------------------
# metadata.csv


def _write_metadata(path: Path, rows, drop=None):
    table = pd.DataFrame(rows, columns=METADATA_COLUMNS)
    if drop:
        table = table.drop(columns=drop)
    table.to_csv(path, index=False)
    return path


def test_read_metadata_types_and_line_numbers(tmp_path):
    path = _write_metadata(tmp_path / "metadata.csv", metadata_rows())
    table = read_metadata(path)
    assert list(table.columns) == list(METADATA_COLUMNS)
    assert [str(table[c].dtype) for c in ("plate", "site", "sirna_id")] == ["int64"] * 3
    assert table.index.tolist() == [2, 3, 4, 5] and table.index.name == "line"


def test_metadata_missing_column(tmp_path):
    path = _write_metadata(tmp_path / "metadata.csv", metadata_rows(), drop=["sirna_id", "well_type"])
    with pytest.raises(InputError, match=r"metadata\.csv: line 1 \(header\): missing column\(s\) well_type, sirna_id"):
        read_metadata(path)


@pytest.mark.parametrize("column, value, expected", [
    ("plate", "one", "a whole number >= 1"),
    ("plate", "1.5", "a whole number >= 1"),
    ("site", "0", "a whole number >= 1"),
    ("sirna_id", "-3", "a whole number >= 0"),
    ("well", "Z99", "a 384-well name"),
    ("well_type", "control", "treatment or positive_control or negative_control"),
    ("experiment", "HUVEC/01", "a folder name"),
    ("sirna", "", "a non-empty siRNA name"),
])
def test_metadata_bad_value_names_file_line_and_column(tmp_path, column, value, expected):
    rows = metadata_rows()
    rows[1][column] = value
    path = _write_metadata(tmp_path / "metadata.csv", rows)
    with pytest.raises(InputError) as error:
        read_metadata(path)
    message = str(error.value)
    assert str(path) in message and f"line 3, column {column}: {value!r}" in message and expected in message


def test_metadata_duplicate_site(tmp_path):
    rows = metadata_rows()
    path = _write_metadata(tmp_path / "metadata.csv", rows + [dict(rows[0])])
    with pytest.raises(InputError, match=r"line 6, column site_id: 'HUVEC-01_1_B02_1' already on line 2"):
        read_metadata(path)


def test_metadata_not_csv_or_absent(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_metadata(tmp_path / "metadata.csv")
    (tmp_path / "metadata.csv").write_text('a,b\n1,2,3,4\n"unterminated')
    with pytest.raises(InputError, match="metadata.csv"):
        read_metadata(tmp_path / "metadata.csv")


def test_plan_metadata_real_folder_and_errors(tmp_path):
    root = make_rxrx1(tmp_path / "rxrx1")
    cfg = {"rxrx1_path": str(root), "layout": "auto", "on_bad_site": "stop", "demo": {}}
    table = plan_metadata(cfg)
    assert len(table) == 4 and data_root(cfg) == str(root)
    assert plate_wildcards(table) == {"experiment": ["HUVEC-01"], "plate": [1]}
    with pytest.raises(InputError, match="config data.rxrx1_path"):
        plan_metadata({**cfg, "rxrx1_path": str(tmp_path / "nowhere")})


def test_plan_metadata_reads_a_table_the_size_of_rxrx1(tmp_path):
    """125,510 rows and 1,139 siRNA ids (RxRx1's metadata.csv); its speed is in benchmarks/bench_data.py."""
    table = demo.rxrx1_shaped_metadata()
    table.to_csv(tmp_path / "metadata.csv", index=False)
    planned = plan_metadata({"rxrx1_path": str(tmp_path)})
    assert len(planned) == demo.RXRX1_SITES and planned["site_id"].is_unique
    assert planned["sirna_id"].nunique() == 1139 and planned.groupby("experiment")["cell_type"].nunique().eq(1).all()


# ---------------------------------------------------------------------------------------------------
# merge


def test_merge_concatenates_and_reports_unplanned_folders(tmp_path):
    rows = metadata_rows() + metadata_rows(plate=2, wells=("B02",))
    root = make_rxrx1(tmp_path / "rxrx1", rows=rows)
    tables, qcs = [], []
    for plate in (1, 2):
        out = tmp_path / f"p{plate}"
        ingest_plate(root, "HUVEC-01", plate, sites_dir=out / "sites", table_path=out / "s.parquet",
                     qc_path=out / "qc.csv", progress=False)
        tables.append(out / "s.parquet")
        qcs.append(out / "qc.csv")
    stray = root / "images" / "HUVEC-01" / "Plate3"
    stray.mkdir()
    Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).save(stray / "B02_s1_w1.png")
    kwargs = dict(sites_path=tmp_path / "sites.parquet", qc_path=tmp_path / "qc.csv", root=root)
    with pytest.raises(InputError, match=r"Plate3: \[no_metadata\] folder with 1 image file\(s\)"):
        merge(tables, qcs, **kwargs)
    sites = merge(tables, qcs, on_bad_site="skip", **kwargs)
    assert len(sites) == 6 and list(sites.columns) == SITES_COLUMNS
    assert sites["Metadata_plate"].tolist() == [1, 1, 1, 1, 2, 2]
    qc = pd.read_csv(tmp_path / "qc.csv")
    assert qc["file"].tolist() == [str(stray)] and qc["action"].tolist() == ["skipped"]
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "sites.parquet"), sites)


# ---------------------------------------------------------------------------------------------------
# demo: schema, layout, determinism, effects, cell types


def test_demo_metadata_schema_and_layout():
    cfg = {**DEMO_DEFAULTS, "n_sirnas": 4, "wells_per_sirna": 2}
    table = plan_metadata({"rxrx1_path": None, "demo": cfg})
    assert list(table.columns) == list(METADATA_COLUMNS)
    assert table.dtypes[["plate", "site", "sirna_id"]].astype(str).tolist() == ["int64"] * 3
    assert (table["dataset"] == "train").all() and table["site_id"].is_unique
    assert set(table["cell_type"]) == {"HEPG2", "HUVEC", "RPE", "U2OS"}
    assert (table["experiment"].str.split("-").str[0] == table["cell_type"]).all()
    assert table["experiment"].nunique() == 8 and table[["experiment", "plate"]].drop_duplicates().shape[0] == 16
    assert (table["site_id"] == table["well_id"] + "_" + table["site"].astype(str)).all()
    assert table["well"].isin(demo.INTERIOR_WELLS).all()
    # every plate holds every siRNA and both controls, in wells_per_sirna wells of sites_per_well sites
    per_plate = table.groupby(["experiment", "plate", "sirna_id"])["well"].nunique()
    assert (per_plate == 2).all() and len(per_plate) == 16 * 6
    assert set(table["sirna_id"]) == {0, 1, 2, 3, 1108, 1138}
    assert (table.groupby("well_id").size() == DEMO_DEFAULTS["sites_per_well"]).all()
    kinds = table.drop_duplicates("sirna_id").set_index("sirna_id")
    assert kinds.loc[1138, "sirna"] == "EMPTY" and kinds.loc[1138, "well_type"] == "negative_control"
    assert kinds.loc[1108, "well_type"] == "positive_control"
    assert (kinds.loc[[0, 1, 2, 3], "well_type"] == "treatment").all()
    assert kinds.loc[[0, 1, 2, 3, 1108], "sirna"].str.startswith("SYNTH-").all()


def test_demo_written_metadata_reads_back_identically(tmp_path):
    cfg = {**DEMO_DEFAULTS, "experiments_per_cell_type": 1, "plates_per_experiment": 1}
    written = demo.write_demo_metadata(tmp_path, cfg)
    pd.testing.assert_frame_equal(read_metadata(tmp_path / "metadata.csv"), written)
    assert "NOT RxRx1" in (tmp_path / "SYNTHETIC_DATA_README.txt").read_text()


def test_demo_config_checks():
    with pytest.raises(InputError, match="data.demo.n_sirnas"):
        demo.demo_config({"n_sirnas": demo.MAX_SIRNAS + 1})
    with pytest.raises(InputError, match="do not fit on a plate"):
        demo.demo_config({"n_sirnas": 40, "wells_per_sirna": 8})
    with pytest.raises(InputError, match="unknown key"):
        demo.demo_config({"sead": 1})
    with pytest.raises(InputError, match="--demo"):
        cli(["demo-metadata", "--out", "unused", "--demo", "{not json"])


def test_demo_sirnas_have_distinct_phenotypes():
    sirnas = demo.demo_sirnas(demo.MAX_SIRNAS)
    effects = [json.dumps(s["effect"], sort_keys=True) for s in sirnas]
    assert len(set(effects)) == len(effects)
    assert len({s["sirna"] for s in sirnas}) == len(sirnas)
    for s in sirnas:
        assert set(s["effect"]) <= set(demo.PARAMETERS)
        assert all(s["effect"][p] != demo.NEUTRAL[p] for p in s["effect"])
        assert s["stains"] and set(s["stains"]) <= set(demo.CHANNELS) or s["sirna_id"] == 1138


def _tiny_demo():
    return {**DEMO_DEFAULTS, "n_sirnas": 2, "experiments_per_cell_type": 1, "plates_per_experiment": 2,
            "wells_per_sirna": 1, "sites_per_well": 1, "image_size": 64}


def _files(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_demo_rendering_is_deterministic_and_order_independent(tmp_path):
    cfg = _tiny_demo()
    demo.write_demo_metadata(tmp_path / "a", cfg)
    demo.write_demo_metadata(tmp_path / "b", cfg)
    for plate in (1, 2):
        demo.render_plate(tmp_path / "a", "RPE-01", plate, cfg, progress=False)
    for plate in (2, 1):  # other order, as parallel jobs may run
        demo.render_plate(tmp_path / "b", "RPE-01", plate, cfg, progress=False)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert a == b and len([k for k in a if k.endswith(".png")]) == 2 * 4 * 6
    demo.render_plate(tmp_path / "c", "RPE-01", 1, {**cfg, "seed": cfg["seed"] + 1}, progress=False)
    c = _files(tmp_path / "c")
    assert len(c) == 4 * 6 and set(c.values()).isdisjoint(a.values())
    assert not [p for p in (tmp_path / "a").rglob(".*")]


def test_demo_plate_ingests_like_rxrx1_and_is_labelled_synthetic(tmp_path):
    cfg = _tiny_demo()
    root = tmp_path / "demo"
    demo.write_demo_metadata(root, cfg)
    demo.render_plate(root, "U2OS-01", 2, cfg, progress=False)
    sites, qc = run_ingest(root, tmp_path, experiment="U2OS-01", plate=2)
    assert qc.empty and len(sites) == 4 and sites["Metadata_synthetic"].all()
    row = sites.iloc[0]
    image = read_site(row["Metadata_image_path"])
    expected = demo.render_site(row["Metadata_cell_type"], row["Metadata_sirna_id"], row["Metadata_site_id"],
                                "U2OS-01", 2, cfg)
    np.testing.assert_array_equal(image, expected)
    sidecar = json.loads((root / "demo_effects.json").read_text())
    assert sidecar["synthetic"] is True and "not RxRx1" in sidecar["label"]
    assert set(sidecar["sirnas"]) == {"0", "1", "1108", "1138"}
    assert sidecar["sirnas"]["0"]["effect"] == dict(demo.PHENOTYPES[0][1])
    assert set(sidecar["batch_effects"]) == {f"{c}-01/Plate{p}" for c in demo.CELL_TYPES for p in (1, 2)}


def test_demo_intensities_within_display_ranges():
    from morphotrust.images import COMPOSITE_RANGES

    image = np.stack([demo.render_site(ct, 1138, f"{ct}-01_1_B02_1", f"{ct}-01", 1) for ct in demo.CELL_TYPES])
    p99 = np.percentile(image, 99, axis=(0, 2, 3))
    assert (p99 <= COMPOSITE_RANGES[:, 1] * 1.5).all() and (p99 >= COMPOSITE_RANGES[:, 1] * 0.3).all(), p99


# Measurements made on rendered images, independently of how the renderer works.


def _nuclei(image):
    mask = ndi.gaussian_filter(image[0].astype(float), 0.5) > 20
    labels, n = ndi.label(mask)
    sizes = ndi.sum(mask, labels, range(1, n + 1))
    return mask, labels, np.flatnonzero(sizes >= 10) + 1, sizes[sizes >= 10]


def _cells(image):
    return (ndi.gaussian_filter(image[2].astype(float), 1) > 12) | (ndi.gaussian_filter(image[1].astype(float), 1) > 15)


def measure(image) -> dict:
    nuclei, _, _, sizes = _nuclei(image)
    n = max(len(sizes), 1)
    cells = _cells(image)
    cyto = cells & ~ndi.binary_dilation(nuclei)
    actin, er, rna, mito, wga = (image[c].astype(float) for c in (2, 1, 3, 4, 5))
    smooth_rna = ndi.gaussian_filter(rna, 0.6)
    nucleoli = (smooth_rna == ndi.maximum_filter(smooth_rna, 3)) & nuclei & (smooth_rna > 60)
    return {
        "nucleus_area": sizes.mean() if len(sizes) else 0.0,
        "nuclei": float(len(sizes)),
        "area_per_cell": cells.sum() / n,
        "er": er[cyto].mean(),
        "actin_texture": np.abs(actin - ndi.gaussian_filter(actin, 1.5))[cells].mean() / actin[cells].mean(),
        "nucleoli": nucleoli.sum() / n,
        "mito": mito[cyto].mean(),
        "mito_cv": mito[cyto].std() / mito[cyto].mean(),
        "golgi_compact": (ndi.gaussian_filter(wga, 1.0) > 80)[cells].mean(),  # bright compact Golgi
    }


# parameter -> (measurement, direction of change when the parameter moves up from neutral, minimum ratio)
READOUTS = {
    "nucleus_scale": ("nucleus_area", +1, 1.5),
    "cell_scale": ("area_per_cell", +1, 1.3),
    "density_scale": ("nuclei", +1, 1.4),
    "er_gain": ("er", +1, 1.3),
    "actin_fibres": ("actin_texture", +1, 1.25),
    "nucleoli_extra": ("nucleoli", +1, 1.3),
    "mito_fragmentation": ("mito_cv", +1, 1.15),
    "mito_gain": ("mito", +1, 1.4),
    "golgi_spread": ("golgi_compact", -1, 2.0),
}


@pytest.fixture(scope="module")
def demo_measurements():
    """Mean measurements per (cell type, sirna_id), 3 sites each, no batch effect; 12 siRNAs incl. pairs."""
    cfg = {**DEMO_DEFAULTS, "n_sirnas": 12}
    out = {}
    for cell_type in demo.CELL_TYPES:
        for sirna in demo.demo_sirnas(cfg["n_sirnas"]):
            values = [measure(demo.render_site(cell_type, sirna["sirna_id"], f"{cell_type}-01_1_T_{k}",
                                               f"{cell_type}-01", 1, cfg, batch=False)) for k in range(3)]
            out[cell_type, sirna["sirna_id"]] = {key: np.mean([v[key] for v in values]) for key in values[0]}
    return cfg, out


def test_every_sidecar_effect_shows_on_its_stain(demo_measurements, tmp_path):
    cfg, measured = demo_measurements
    demo.write_demo_metadata(tmp_path, cfg)
    sidecar = json.loads((tmp_path / "demo_effects.json").read_text())
    checked = 0
    for sirna_id, entry in sidecar["sirnas"].items():
        for parameter, value in entry["effect"].items():
            readout, direction, min_ratio = READOUTS[parameter]
            assert set(sidecar["parameters"][parameter]["stains"]) <= set(entry["stains"])
            up = (value > sidecar["parameters"][parameter]["neutral"]) == (direction > 0)
            for cell_type in demo.CELL_TYPES:
                treated = measured[cell_type, int(sirna_id)][readout]
                control = measured[cell_type, demo.NEGATIVE_CONTROL_ID][readout]
                ratio = treated / control if up else control / treated
                assert ratio >= min_ratio, (entry["sirna"], parameter, cell_type, readout, treated, control)
                checked += 1
    assert checked >= 4 * 16  # every single phenotype, two pairs and the positive control


def test_cell_types_differ_visibly(demo_measurements):
    _, measured = demo_measurements
    empty = {ct: measured[ct, demo.NEGATIVE_CONTROL_ID] for ct in demo.CELL_TYPES}
    area = {ct: m["nucleus_area"] for ct, m in empty.items()}
    count = {ct: m["nuclei"] for ct, m in empty.items()}
    assert area["HEPG2"] < area["HUVEC"] < area["U2OS"] and area["HEPG2"] < area["RPE"] < area["U2OS"]
    assert count["HEPG2"] > 1.5 * count["HUVEC"] and min(count["HUVEC"], count["RPE"]) > 2 * count["U2OS"]
    assert empty["U2OS"]["area_per_cell"] > 2 * empty["RPE"]["area_per_cell"]

    def elongation(cell_type):
        image = demo.render_site(cell_type, 1138, f"{cell_type}-01_1_B02_1", f"{cell_type}-01", 1, batch=False)
        _, labels, keep, _ = _nuclei(image)
        ratios = []
        for index in keep:
            ys, xs = np.nonzero(labels == index)
            eigen = np.linalg.eigvalsh(np.cov(np.stack([xs, ys])))
            ratios.append(np.sqrt(eigen[1] / max(eigen[0], 1e-6)))
        return np.median(ratios)

    assert elongation("HUVEC") > 1.4 > elongation("RPE")


def test_nuclei_stay_recognisable_at_64_pixels():
    image = demo.render_site("HEPG2", 1138, "HEPG2-01_1_B02_1", "HEPG2-01", 1)  # the smallest nuclei
    small = resize_site(image, 64)
    mask = ndi.gaussian_filter(small[0].astype(float), 0.3) > 18
    labels, n = ndi.label(mask)
    sizes = ndi.sum(mask, labels, range(1, n + 1))
    diameters = 2 * np.sqrt(sizes[sizes >= 4] / np.pi)
    assert len(diameters) >= 10 and np.median(diameters) >= 5.0


def test_batch_effects_differ_between_plates_and_experiments():
    a = demo.batch_effects(7, "HUVEC-01", 1)
    assert a == demo.batch_effects(7, "HUVEC-01", 1)
    for other in (demo.batch_effects(7, "HUVEC-01", 2), demo.batch_effects(7, "HUVEC-02", 1)):
        assert other["gain"] != a["gain"] and other["offset"] != a["offset"]
    site = dict(cell_type="RPE", sirna_id=1138, site_id="RPE-01_1_B02_1", experiment="RPE-01")
    assert not np.array_equal(demo.render_site(**site, plate=1), demo.render_site(**site, plate=2))


# ---------------------------------------------------------------------------------------------------
# config and CLI


def test_schema_defaults_match_code_and_config():
    import jsonschema

    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    data = schema["properties"]["data"]
    defaults = {k: v["default"] for k, v in data["properties"]["demo"]["properties"].items()}
    assert demo.demo_config({}) == defaults  # the code fills in exactly the schema's defaults
    assert data["properties"]["demo"]["properties"]["n_sirnas"]["maximum"] == demo.MAX_SIRNAS
    for section in (data, data["properties"]["demo"]):
        assert all("description" in v for v in section["properties"].values())
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    jsonschema.validate(config["data"], data)


def test_cli_renders_ingests_merges_and_draws_grid(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = json.dumps(_tiny_demo())
    cli(["demo-metadata", "--metadata", "demo/metadata.csv", "--effects", "demo/demo_effects.json",
         "--readme", "demo/SYNTHETIC_DATA_README.txt", "--demo", cfg])
    tables, qcs = [], []
    places = {"HEPG2-01": ["--out", "demo"], "U2OS-01": ["--plate-dir", "demo/images/U2OS-01/Plate1"]}
    for experiment, where in places.items():
        cli(["render-plate", *where, "--experiment", experiment, "--plate", "1", "--demo", cfg])
        out = f"ingest/{experiment}"
        cli(["ingest-plate", "--metadata", "demo/metadata.csv", "--experiment", experiment, "--plate", "1",
             "--layout", "auto", "--on-bad-site", "stop", "--sixteen-bit", "convert", "--sixteen-bit-max", "65535",
             "--sites-dir", f"sites/{experiment}", "--table", f"{out}/sites.parquet", "--qc", f"{out}/qc.csv"])
        tables.append(f"{out}/sites.parquet")
        qcs.append(f"{out}/qc.csv")
    # the demo folder has plates nobody rendered: merge only looks at image folders that exist
    cli(["merge", "--tables", *tables, "--qc-tables", *qcs, "--metadata", "demo/metadata.csv", "--on-bad-site", "stop",
         "--sites", "sites.parquet", "--qc", "qc_skipped.csv"])
    sites = pd.read_parquet("sites.parquet")
    assert len(sites) == 8 and sites["Metadata_synthetic"].all()
    assert sites["Metadata_image_path"].str.startswith("sites/").all()
    assert pd.read_csv("qc_skipped.csv").empty
    cli(["demo-grid", "--sites", "sites.parquet", "--effects", "demo/demo_effects.json", "--out", "grid.png"])
    with Image.open("grid.png") as grid:
        assert grid.width > 500 and grid.height > 300


# ---------------------------------------------------------------------------------------------------
# file inventories (what makes Snakemake rerun a plate whose files changed)


def test_plate_inventory_changes_only_when_files_do(tmp_path):
    from morphotrust.data import inventory

    root = make_rxrx1(tmp_path / "rxrx1")
    target = tmp_path / "inventory" / "Plate1.tsv"
    first = inventory.plate_inventory(root, "HUVEC-01", 1)
    assert first.count("\n") == 1 + 24 and "B02_s1_w1.png\t" in first
    inventory.track(target, first)
    written = target.stat().st_mtime_ns
    (root / "images/HUVEC-01/Plate1/.hidden.png").write_bytes(b"x")  # hidden / non-image files are not read
    (root / "images/HUVEC-01/Plate1/notes.txt").write_text("x")
    assert inventory.track(target, inventory.plate_inventory(root, "HUVEC-01", 1)) == str(target)
    assert target.stat().st_mtime_ns == written  # unchanged listing: file untouched
    png = root / "images/HUVEC-01/Plate1/B02_s1_w1.png"
    Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).save(png)  # replaced in place
    os.utime(png, ns=(png.stat().st_atime_ns, png.stat().st_mtime_ns + 1))
    changed = inventory.plate_inventory(root, "HUVEC-01", 1)
    assert changed != first
    inventory.track(target, changed)
    assert target.read_text() == changed
    assert "no folder" in inventory.plate_inventory(root, "HUVEC-01", 9)


def test_external_inventory_lists_every_named_file(tmp_path):
    from morphotrust.data import inventory
    from morphotrust.generated.layouts import ExternalSettings

    (tmp_path / "a.tif").write_bytes(b"1234")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,cell_type,sirna_id\na.tif,HUVEC,1\nb,HUVEC,1\n")
    listing = inventory.external_inventory(ExternalSettings(folder=str(tmp_path), manifest=str(manifest)))
    assert "a.tif\t4\t" in listing
    assert all(f"b_w{c}.png\tmissing" in listing for c in range(1, 7))
    absent = ExternalSettings(folder=str(tmp_path), manifest=str(tmp_path / "absent.csv"))
    assert "unlisted" in inventory.external_inventory(absent)
    # a pattern layout lists the files matching it
    (tmp_path / "HUVEC").mkdir()
    (tmp_path / "HUVEC" / "x.npy").write_bytes(b"12")
    pattern = ExternalSettings(folder=str(tmp_path), layout="pattern", pattern="{cell_type}/{name}.npy")
    assert "HUVEC/x.npy\t2\t" in inventory.external_inventory(pattern)


def test_a_long_list_of_bad_images_is_capped_with_counts_and_the_full_list_in_a_file(tmp_path):
    """Issue 26: RxRx1's 51 plates with 20 problems each: one message of at most 50 lines, every plate's problems
    counted (those shown by plate, the rest in one line), every problem in one file."""
    from morphotrust.data.ingest import QC_COLUMNS, _sites_table

    tables, qcs = [], []
    for index in range(51):
        experiment, plate = f"HUVEC-{index // 4 + 1:02d}", index % 4 + 1
        qc = pd.DataFrame([{"experiment": experiment, "plate": plate, "site_id": f"{experiment}_{plate}_B02_{i}",
                            "metadata_line": i + 2, "file": f"img/{experiment}/Plate{plate}/B{i:02d}_s1_w1.png",
                            "problem": "unreadable", "detail": "not a PNG", "action": "stopped"}
                           for i in range(20)], columns=QC_COLUMNS)
        qcs.append(tmp_path / f"qc{index}.csv")
        qc.to_csv(qcs[-1], index=False)
        tables.append(tmp_path / f"sites{index}.parquet")
        _sites_table([]).to_parquet(tables[-1])
    problems = tmp_path / "qc_problems.csv"
    with pytest.raises(InputError) as caught:
        merge(tables, qcs, sites_path=tmp_path / "sites.parquet", qc_path=tmp_path / "qc.csv", problems_path=problems)
    lines = str(caught.value).splitlines()
    assert len(lines) <= 50, len(lines)
    assert "1020 problem(s) on 51 of 51 plate(s)" in lines[0] and "unreadable 1020" in lines[0]
    plates = [line for line in lines if line.startswith("  HUVEC-")]
    assert plates and all(line.endswith(": 20 problem(s) (unreadable 20)") for line in plates)
    rest = 51 - len(plates)
    assert f"  ... and {rest} more plate(s) with {20 * rest} problem(s)" in lines
    assert lines[-1] == f"every problem, one per line: {problems}"
    assert len(pd.read_csv(problems)) == 1020
