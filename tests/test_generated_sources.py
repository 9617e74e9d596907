"""Generated-image sources besides the workflow's own model: demo stand-ins and external generations."""

import os

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from morphotrust.config import check_config
from morphotrust.errors import InputError, InputErrors
from morphotrust.generated import external, standins
from morphotrust.generated.layouts import ExternalSettings
from morphotrust.images import read_site, resize_site

SIRNAS = {1: "s1", 2: "s2", 3: "s3", 1138: "EMPTY"}


def standins_config(**values) -> dict:
    """Config generated.standins: `values` over the schema's defaults (the only place defaults live)."""
    return check_config({"generated": {"standins": values}})["generated"]["standins"]


@pytest.fixture
def subsets(tmp_path):
    """A small subset manifest + evaluation stack + sites table, in the layout the subsets stage writes."""
    rng = np.random.default_rng(0)
    rows = []
    for cell, sirna, arm, n_eval in [("HUVEC", 1, "seen", 4), ("HUVEC", 2, "seen", 4), ("HUVEC", 3, "seen", 3),
                                     ("RPE", 1, "unseen", 3), ("HUVEC", 1138, "control", 2)]:
        splits = ["evaluation"] * n_eval + ([] if arm == "unseen" else ["train", "train", "calibration"])
        for k, split in enumerate(splits):
            rows.append(dict(Metadata_site_id=f"{cell}-01_1_{sirna}_{k}", Metadata_cell_type=cell,
                             Metadata_sirna_id=sirna, Metadata_sirna=SIRNAS[sirna],
                             Metadata_condition=f"{cell}:{sirna}", Metadata_arm=arm, Metadata_split=split,
                             Metadata_source="real"))
    manifest = pd.DataFrame(rows)
    manifest["Metadata_stack_index"] = manifest.groupby("Metadata_split").cumcount()
    n_eval = int((manifest["Metadata_split"] == "evaluation").sum())
    # Textured images (smooth blobs + fine noise) so blur has something to remove.
    stack = rng.integers(20, 200, (n_eval, 6, 32, 32), dtype=np.uint8)
    paths = {"manifest": tmp_path / "manifest.parquet", "stack": tmp_path / "evaluation.npy",
             "sites": tmp_path / "sites.parquet"}
    manifest.to_parquet(paths["manifest"])
    np.save(paths["stack"], stack)
    sites = pd.DataFrame([dict(Metadata_cell_type=c, Metadata_sirna_id=s, Metadata_sirna=SIRNAS[s])
                          for c in ("HUVEC", "RPE", "U2OS") for s in SIRNAS])
    sites.to_parquet(paths["sites"])
    return paths, manifest, stack


# --- stand-ins ----------------------------------------------------------------------------------------------


def test_standins_labels_and_provenance(subsets, tmp_path):
    paths, manifest, stack = subsets
    table = standins.make_standins(paths["manifest"], paths["stack"], standins_config(seed=0), tmp_path / "out")
    assert (tmp_path / "out" / "manifest.parquet").exists()
    assert set(table["Metadata_source"]) == {"generated"} and table["Metadata_standin"].all()
    assert table["Metadata_generator"].str.startswith("standin:").all()
    assert table["Metadata_sample_id"].is_unique
    # controls are not used; every studied evaluation site gives a copy, a blur and a drift
    evaluation = manifest[(manifest["Metadata_split"] == "evaluation") & (manifest["Metadata_arm"] != "control")]
    for kind in ("copy", "blur", "drift"):
        rows = table[table["Metadata_generator"] == f"standin:{kind}"]
        assert sorted(rows["Metadata_real_site_id"]) == sorted(evaluation["Metadata_site_id"])
        assert (rows["Metadata_condition"] == rows["Metadata_true_condition"]).all()
    wrong = table[table["Metadata_generator"] == "standin:wrong_label"]
    assert len(wrong) == 11  # the 11 HUVEC sites; RPE has no other studied siRNA
    assert (wrong["Metadata_condition"] != wrong["Metadata_true_condition"]).all()
    assert (wrong["Metadata_cell_type"] == "HUVEC").all()
    assert set(wrong["Metadata_condition"]) <= {"HUVEC:1", "HUVEC:2", "HUVEC:3"}
    # requested labels are consistent with the requested condition
    assert (table["Metadata_condition"] == table["Metadata_cell_type"] + ":"
            + table["Metadata_sirna_id"].astype(str)).all()
    assert (table["Metadata_sirna"] == table["Metadata_sirna_id"].map(SIRNAS)).all()
    rpe = table[table["Metadata_cell_type"] == "RPE"]
    assert set(rpe["Metadata_arm"]) == {"unseen"} and len(rpe) == 9


def test_standin_images_copy_blur_drift(subsets, tmp_path):
    paths, manifest, stack = subsets
    cfg = standins_config(seed=0, blur_sigma=1.5, drift_gain=[2.0, 0.5, 1.0, 1.0, 1.0, 0.25])
    table = standins.make_standins(paths["manifest"], paths["stack"], cfg, tmp_path / "out")
    index = manifest.set_index("Metadata_site_id")["Metadata_stack_index"]

    def image(kind, site):
        row = table[(table["Metadata_generator"] == f"standin:{kind}") & (table["Metadata_real_site_id"] == site)]
        return read_site(row["Metadata_image_path"].iloc[0])

    for site in ("HUVEC-01_1_1_0", "RPE-01_1_1_2"):
        real = stack[index[site]]
        assert np.array_equal(image("copy", site), real)
        blurred = image("blur", site).astype(float)
        roughness = lambda x: np.abs(np.diff(x, axis=-1)).mean()  # noqa: E731
        assert roughness(blurred) < 0.3 * roughness(real.astype(float))
        assert abs(blurred.mean() - real.mean()) < 2
        drifted = image("drift", site).astype(float)
        ratios = drifted.mean((1, 2)) / real.astype(float).mean((1, 2))
        assert ratios[1] == pytest.approx(0.5, abs=0.01) and ratios[5] == pytest.approx(0.25, abs=0.01)
        assert ratios[2] == pytest.approx(1.0, abs=1e-6)
        assert 1.2 < ratios[0] < 2.0  # doubled, then clipped at 255


def test_standins_are_deterministic_and_capped(subsets, tmp_path):
    paths, _, _ = subsets
    a = standins.make_standins(paths["manifest"], paths["stack"], standins_config(seed=3), tmp_path / "a")
    b = standins.make_standins(paths["manifest"], paths["stack"], standins_config(seed=3), tmp_path / "b")
    c = standins.make_standins(paths["manifest"], paths["stack"], standins_config(seed=4), tmp_path / "c")
    columns = [col for col in a.columns if col != "Metadata_image_path"]
    pd.testing.assert_frame_equal(a[columns], b[columns])
    for pa, pb in zip(a["Metadata_image_path"], b["Metadata_image_path"]):
        assert np.array_equal(read_site(pa), read_site(pb))
    assert not a["Metadata_condition"].equals(c["Metadata_condition"])  # wrong labels drawn by the seed
    capped = standins.make_standins(paths["manifest"], paths["stack"], standins_config(max_sites_per_condition=2),
                                    tmp_path / "d")
    assert capped[capped["Metadata_generator"] == "standin:copy"].groupby("Metadata_condition").size().max() == 2


def test_standins_bad_config(subsets, tmp_path):
    paths, _, _ = subsets
    with pytest.raises(InputError, match="drift_gain"):
        standins.make_standins(paths["manifest"], paths["stack"], {**standins_config(), "drift_gain": [1.0, 2.0]},
                               tmp_path / "x")


# --- external generations -------------------------------------------------------------------------------------


def write_pngs(prefix, image):
    prefix.parent.mkdir(parents=True, exist_ok=True)
    for c, plane in enumerate(image, start=1):
        Image.fromarray(plane).save(f"{prefix}_w{c}.png")


def convert(folder, manifest_csv, paths, resolution, out, **settings):
    """The external conversion of a manifest layout at `resolution`."""
    settings = ExternalSettings(folder=str(folder), manifest=str(manifest_csv), resolution=resolution, **settings)
    return external.convert_external(settings, paths["sites"], paths["manifest"], out)


def _with_seen_rpe(paths, manifest, tmp_path):
    """The fixture's manifest plus a seen RPE condition, so the trust scorer's vocabulary knows RPE."""
    extra = manifest[manifest["Metadata_condition"] == "HUVEC:3"].assign(
        Metadata_cell_type="RPE", Metadata_condition="RPE:3",
        Metadata_site_id=lambda t: "RPE" + t["Metadata_site_id"].str.removeprefix("HUVEC"))
    path = tmp_path / "manifest_rpe.parquet"
    pd.concat([manifest, extra[extra["Metadata_split"] == "train"]], ignore_index=True).to_parquet(path)
    return dict(paths, manifest=path)


def test_external_good_folder_in_both_layouts(subsets, tmp_path):
    paths, manifest, _ = subsets
    paths = _with_seen_rpe(paths, manifest, tmp_path)
    folder = tmp_path / "gen"
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (6, 40, 40), dtype=np.uint8) for _ in range(4)]
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", images[0])  # (6, H, W)
    tifffile.imwrite(folder / "b.tiff", np.moveaxis(images[1], 0, -1))  # (H, W, 6)
    write_pngs(folder / "sub" / "c", images[2])
    write_pngs(folder / "d", images[3])
    pd.DataFrame({"path": ["a.tif", "b.tiff", "sub/c", "d"], "cell_type": ["HUVEC", "RPE", "RPE", "HUVEC"],
                  "sirna_id": ["1", "1", "", "3"], "sirna": ["", "s1", "s2", "s3"]}).to_csv(
        tmp_path / "gen.csv", index=False)
    table = convert(folder, tmp_path / "gen.csv", paths, 32, tmp_path / "out")
    assert list(table["Metadata_condition"]) == ["HUVEC:1", "RPE:1", "RPE:2", "HUVEC:3"]
    # listed seen / listed unseen / not listed, no training sites (its values are fitted) / listed seen
    assert list(table["Metadata_arm"]) == ["seen", "unseen", "unseen", "seen"]
    assert list(table["Metadata_sirna"]) == ["s1", "s1", "s2", "s3"]
    assert list(table["Metadata_external_line"]) == [2, 3, 4, 5]
    assert set(table["Metadata_generator"]) == {"external:manifest"} and set(table["Metadata_source"]) == {"generated"}
    for path, original in zip(table["Metadata_image_path"], images):
        converted = read_site(path)
        assert converted.shape == (6, 32, 32) and converted.dtype == np.uint8
        assert np.array_equal(converted, resize_site(original, 32))
    assert (tmp_path / "out" / "manifest.parquet").exists()


def test_external_bad_inputs_are_reported_together_by_line(subsets, tmp_path):
    paths, _, _ = subsets
    folder = tmp_path / "gen"
    folder.mkdir()
    good = np.zeros((6, 16, 16), np.uint8)
    tifffile.imwrite(folder / "ok.tif", good)
    tifffile.imwrite(folder / "three.tif", np.zeros((3, 16, 16), np.uint8), photometric="minisblack")
    tifffile.imwrite(folder / "deep.tif", np.zeros((16, 16, 16), np.uint16))
    tifffile.imwrite(folder / "wide.tif", np.zeros((6, 16, 20), np.uint8))
    (folder / "junk.tif").write_bytes(b"not a tiff at all")
    write_pngs(folder / "five", good)
    os.remove(folder / "five_w6.png")
    outside = tmp_path / "outside.tif"
    tifffile.imwrite(outside, good)
    os.symlink(outside, folder / "link.tif")
    rows = [
        ("ok.tif", "HUVEC", "1", ""),          # 2 fine
        ("/etc/passwd.tif", "HUVEC", "1", ""),  # 3 absolute
        ("../outside.tif", "HUVEC", "1", ""),   # 4 '..'
        ("link.tif", "HUVEC", "1", ""),         # 5 symlink leaving the folder
        ("missing.tif", "HUVEC", "1", ""),      # 6 missing file
        ("five", "HUVEC", "1", ""),             # 7 one channel PNG missing
        ("ok.tif", "HUVEC", "2", ""),           # 8 duplicate of line 2
        ("three.tif", "HUVEC", "1", ""),        # 9 wrong channel count
        ("junk.tif", "HUVEC", "1", ""),         # 10 unreadable
        ("deep.tif", "HUVEC", "1", ""),         # 11 16 channels -> wrong channel count
        ("wide.tif", "HUVEC", "1", ""),         # 12 not square
        ("five_w1.png", "HUVEC", "1", ""),      # 13 single PNG named
        ("ok.tif", "HEK293", "1", ""),          # 14 unknown cell type (and duplicate)
        ("ok.tif", "HUVEC", "999", ""),         # 15 unknown sirna_id (and duplicate)
        ("ok.tif", "HUVEC", "", "s9"),          # 16 unknown siRNA name (and duplicate)
        ("ok.tif", "HUVEC", "1", "s2"),         # 17 disagreeing siRNA columns (and duplicate)
    ]
    pd.DataFrame(rows, columns=["path", "cell_type", "sirna_id", "sirna"]).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(InputErrors) as caught:
        convert(folder, tmp_path / "bad.csv", paths, 16, tmp_path / "out")
    message = str(caught.value)
    expected = {
        3: "is absolute", 4: "leaves the folder via '..'", 5: "link pointing outside the folder",
        6: "missing file(s): missing.tif", 7: "missing file(s): five_w6.png", 8: "listed twice (first on line 2)",
        9: "three.tif: shape (3, 16, 16) is not 6 stains", 10: "junk.tif: unreadable",
        11: "deep.tif: shape (16, 16, 16) is not 6 stains", 12: "expected a square image",
        13: "five_w1.png: shape (16, 16) is not 6 stains", 14: "cell type `HEK293` is not in the real data",
        15: "sirna_id 999 is not in the real data", 16: "siRNA `s9` is not in the real data",
        17: "sirna `s2` is sirna_id 2, but sirna_id says 1",
    }
    for line, text in expected.items():
        assert any(p.startswith(f"line {line}: ") and text in p for p in caught.value.problems), (line, message)
    assert not any(p.startswith("line 2:") for p in caught.value.problems)
    assert str(tmp_path / "bad.csv") in message and "nothing was converted" in message
    assert not (tmp_path / "out").exists()


def test_external_values_without_fitting_data_are_reported_by_line(subsets, tmp_path):
    """Values the trust scorer never saw (controls, cell types only in the unseen arm or only in the sites
    table) stop the conversion, every row and both attributes at once, by the user's CSV line."""
    paths, manifest, _ = subsets
    folder = tmp_path / "gen"
    folder.mkdir()
    tifffile.imwrite(folder / "ok.tif", np.zeros((6, 16, 16), np.uint8))
    rows = [("ok.tif", "HUVEC", "1"), ("ok.tif", "U2OS", "1138"), ("ok.tif", "HUVEC", "1138"),
            ("ok.tif", "RPE", "2"), ("ok.tif", "U2OS", "3")]
    pd.DataFrame([(f"{i}.tif", c, s) for i, (_, c, s) in enumerate(rows)],
                 columns=["path", "cell_type", "sirna_id"]).to_csv(tmp_path / "m.csv", index=False)
    for i in range(len(rows)):
        tifffile.imwrite(folder / f"{i}.tif", np.zeros((6, 16, 16), np.uint8))
    with pytest.raises(InputErrors) as caught:
        convert(folder, tmp_path / "m.csv", paths, 16, tmp_path / "o")
    problems = caught.value.problems
    assert [p.split(":")[0] for p in problems] == ["line 3", "line 3", "line 4", "line 5", "line 6"], problems
    assert "cell type `U2OS` has no real training sites of the seen arm" in problems[0]
    assert "siRNA 1138 (EMPTY) has no real training sites of the seen arm" in problems[1]
    assert "expected one of 1, 2, 3;" in problems[1]
    assert "siRNA 1138 (EMPTY)" in problems[2]
    assert "cell type `RPE`" in problems[3]  # RPE is only in the unseen arm
    assert "cell type `U2OS`" in problems[4]
    # The same vocabulary the trust scorer is fitted on: seen-arm rows of the train split.
    from morphotrust.trust import fitting_vocabulary
    assert fitting_vocabulary(manifest) == {"cell_type": {"HUVEC": 6}, "sirna_id": {1: 2, 2: 2, 3: 2}}
    assert not (tmp_path / "o").exists()


def test_external_dtype_and_manifest_shape_errors(subsets, tmp_path):
    paths, _, _ = subsets
    folder = tmp_path / "gen"
    folder.mkdir()
    tifffile.imwrite(folder / "u16.tif", np.full((6, 16, 16), 100, np.uint16))
    pd.DataFrame({"path": ["u16.tif"], "cell_type": ["HUVEC"], "sirna_id": ["1"]}).to_csv(tmp_path / "m.csv",
                                                                                        index=False)
    # 16-bit values that never pass 255: 8-bit data in 16 bits, or a very dim 16-bit set? auto refuses to guess
    with pytest.raises(InputErrors, match="auto refuses: pixel type uint16, values 100 .. 100 over 1 images"):
        convert(folder, tmp_path / "m.csv", paths, 16, tmp_path / "o")
    pd.DataFrame({"path": ["u16.tif"], "cell": ["HUVEC"]}).to_csv(tmp_path / "cols.csv", index=False)
    with pytest.raises(InputError, match="line 1: missing column\\(s\\): cell_type, sirna_id or sirna"):
        convert(folder, tmp_path / "cols.csv", paths, 16, tmp_path / "o")
    with pytest.raises(InputError, match="folder of external generations not found"):
        convert(tmp_path / "nope", tmp_path / "m.csv", paths, 16, tmp_path / "o")


def test_generation_plan_gives_the_rule_files_their_derived_values(tmp_path):
    """morphotrust.config.generation_plan: what common.smk names for every rule file (no config logic there)."""
    from morphotrust.config import generation_plan

    pixel = generation_plan(check_config({"generator": {"autoencoder": "none", "gpus": 2, "nodes": 3, "threads": 4},
                                          "generated": {"source": "generator"}}))
    assert pixel["autoencoder_json"] == [] and pixel["ceiling"] == [] and not pixel["trained_autoencoder"]
    assert (pixel["training_threads"], pixel["training_gpus"], pixel["training_gres"]) == (8, 0, "gpu:2")
    assert pixel["generation_trust_summary"] == ["results/generation_trust/summary.json"]
    latent = generation_plan(check_config({"generator": {"autoencoder": "trained", "gpus": 2}}))
    assert latent["autoencoder_json"] == "results/autoencoder/autoencoder.json" and latent["trained_autoencoder"]
    assert latent["ceiling"] == ["results/ceiling/ceiling.json"] and latent["sd_vae_weights"] == []
    assert (latent["training_gpus"], latent["training_gres"]) == (2, "")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,cell_type,sirna_id\n")
    external = {"folder": str(tmp_path), "manifest": str(manifest), "channels": "rxrx1_rgb"}
    composite = generation_plan(check_config({"generator": {"autoencoder": "trained"},
                                              "generated": {"source": "external", "external": external}}))
    assert composite["external_reference"] and not composite["cellprofiler_applicable"]
    assert composite["ceiling"] == [] and composite["generation_trust_summary"] == []
    assert composite["external_settings"].composite
