"""Another generator's images as it writes them (issue 23): file formats, value ranges, layouts and presets,
composite channels and crops, the dry-run errors, and the known answer on real held-out demo sites."""

import contextlib
import json

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
import yaml
from PIL import Image

from morphotrust.errors import InputError, InputErrors
from morphotrust.generated import formats
from morphotrust.generated.external import Known, build_reference, check_external, convert_external
from morphotrust.generated.layouts import ExternalSettings, compile_pattern, settings_of, settings_problems
from morphotrust.images import COMPOSITE_RANGES, composite_of, composite_rgb
from workflow_helpers import TINY_DEMO, make_workdir, run_snakemake, workdir_with_results_of

RNG = np.random.default_rng(0)
SITE = RNG.integers(0, 200, (6, 24, 24), dtype=np.uint8)


# --- formats: every file type, both channel orders, headers agree with pixels ---------------------------------


def _write_every_format(folder):
    """{path: (expected uint8 image, value range)} of SITE written in every supported way."""
    folder.mkdir(exist_ok=True)
    unit = SITE.astype(np.float32) / 255.0
    torch.save(torch.from_numpy(unit), folder / "a.pt")                                # [0,1], (C, H, W)
    torch.save(torch.from_numpy(unit).to(torch.bfloat16), folder / "half.pt")         # bfloat16 tensor
    np.save(folder / "b.npy", np.moveaxis(unit * 2 - 1, 0, -1))                       # [-1,1], (H, W, C)
    np.savez(folder / "c.npz", image=SITE[None])                                      # batch axis of 1
    tifffile.imwrite(folder / "d.tif", unit)                                          # float TIFF
    tifffile.imwrite(folder / "e.tif", SITE.astype(np.uint16) * 257)                  # uint16 TIFF
    for c, plane in enumerate(SITE.astype(np.uint16) * 257, start=1):                 # 16-bit PNG stack
        Image.fromarray(plane).save(folder / f"f_w{c}.png")
    return {"a.pt": "[0,1]", "half.pt": "[0,1]", "b.npy": "[-1,1]", "c.npz": "uint8", "d.tif": "[0,1]",
            "e.tif": "uint16", "f": "uint16"}


def test_every_format_reads_to_the_same_site(tmp_path):
    for path, value_range in _write_every_format(tmp_path).items():
        shape, dtype = formats.check_header(tmp_path, path, 6)
        raw = formats.read_raw(tmp_path, path, 6)
        assert shape == raw.shape == (6, 24, 24), path
        assert dtype == str(raw.dtype), path
        tolerance = 1 if path == "half.pt" else 0  # bfloat16 keeps 8 bits of mantissa
        assert np.abs(formats.to_uint8(raw, value_range).astype(int) - SITE).max() <= tolerance, path


def test_unusable_files_say_why(tmp_path):
    torch.save({"image": torch.zeros(6, 8, 8)}, tmp_path / "dict.pt")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")  # a pickled object: weights_only refuses it
    np.savez(tmp_path / "two.npz", a=np.zeros(1), b=np.zeros(1))
    np.save(tmp_path / "objects.npy", np.array([{"x": 1}], dtype=object))
    np.save(tmp_path / "five.npy", np.zeros((5, 8, 8)))
    Image.fromarray(np.zeros((8, 8, 4), np.uint8), "RGBA").save(tmp_path / "rgba.png")
    expected = {"dict.pt": "holds a dict, expected one tensor", "module.pt": "not a tensor file",
                "two.npz": "holds 2 arrays", "objects.npy": "unreadable", "five.npy": "is not 6 stains",
                "rgba.png": "PNG mode RGBA"}
    for name, text in expected.items():
        with pytest.raises(ValueError, match=text):
            formats.check_header(tmp_path, name, 6)


# --- value ranges ----------------------------------------------------------------------------------------------


def _seen(dtype, low, high):
    return formats.Extremes(dtype, low, high)


@pytest.mark.parametrize("seen, decided", [
    ([_seen("float32", 0.0, 0.9), _seen("float32", 0.01, 1.0)], "[0,1]"),
    ([_seen("float32", -1.0, 0.7), _seen("float32", -0.9, 0.2)], "[-1,1]"),
    ([_seen("uint8", 0, 200)], "uint8"),
    ([_seen("uint16", 0, 4095)], "uint16"),
])
def test_auto_decides_unambiguous_sets(seen, decided):
    assert formats.resolve_range("auto", seen) == decided


@pytest.mark.parametrize("seen, text", [
    ([_seen("uint8", 0, 1)], "floats in \\[0, 1\\] cast to uint8"),
    ([_seen("uint16", 0, 250)], "8-bit values stored in 16 bits"),
    ([_seen("float32", 0, 187.0)], "declare value_range uint8"),
    ([_seen("uint8", 0, 90), _seen("float32", 0, 1)], "mix pixel types"),
])
def test_auto_refuses_ambiguous_sets_saying_what_it_saw(seen, text):
    with pytest.raises(ValueError, match=text):
        formats.resolve_range("auto", seen)


def test_declared_range_guards():
    with pytest.raises(ValueError, match="declares floats, but the images hold integers"):
        formats.resolve_range("[0,1]", [_seen("uint8", 0, 1)])
    assert formats.out_of_range("[0,1]", _seen("float32", -0.01, 1.01)) is None  # within 2%: clipped
    assert "outside the declared value_range [0,1]" in formats.out_of_range("[0,1]", _seen("float32", -1, 1))
    assert formats.to_uint8(np.array([-1.0, 0.0, 1.0]), "[-1,1]").tolist() == [0, 128, 255]
    assert formats.to_uint8(np.array([0, 65535, np.nan]), "uint16").tolist() == [0, 255, 0]
    # a [0,1] float set cast to uint8 is all zeros; a [-1,1] one wraps to 0, 1 and 255: both refused as a set
    naive = (RNG.random((4, 6, 8, 8))).astype(np.uint8)
    wrapped = (RNG.random((4, 6, 8, 8)) * 2 - 1).astype(np.int8).astype(np.uint8)
    for images in (naive, wrapped):
        flat = sum(formats.degenerate(image) for image in images)
        assert "the scale is likely wrong" in formats.degenerate_set_problem(flat, len(images), "uint8")
    assert formats.degenerate_set_problem(3, 4, "uint8") is None  # a few blank generations are scored


# --- composite mappings ---------------------------------------------------------------------------------------


def test_composite_mappings():
    assert np.array_equal(composite_of(SITE, "rxrx1_rgb"), composite_rgb(SITE).transpose(2, 0, 1))
    # CellFlux's own arithmetic, spelled out: stains (stretched over their display ranges) normalised to [-1, 1],
    # mixed, clamped, back to 0..255, floored
    stretched = np.clip(SITE / COMPOSITE_RANGES[:, 1, None, None], 0, 1)
    x = stretched * 2 - 1
    weights = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0]])
    mixed = np.clip(np.einsum("chw,cn->nhw", x, weights), -1, 1) * 0.5 + 0.5
    assert np.abs(composite_of(SITE, "cellflux_rgb").astype(int) - np.floor(mixed * 255)).max() <= 1
    matrix = [[1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1], [0.5, 0.5, 0, 0, 0, 0]]
    mapped = composite_of(SITE, matrix)
    assert np.array_equal(mapped[0], SITE[0]) and np.array_equal(mapped[1], SITE[5])


# --- layouts, patterns and mislabel guards --------------------------------------------------------------------


def test_pattern_fields_and_repeated_fields():
    regex = compile_pattern("{sirna}/{sirna}-generated-{i}.png")
    assert regex.fullmatch("s1/s1-generated-3.png").group("sirna") == "s1"
    assert regex.fullmatch("s1/s2-generated-3.png") is None  # folder and file name disagree: not an image
    index = compile_pattern("images/cell{cell_type_index}_sirna{sirna_index}_{i}.pt")
    assert index.fullmatch("images/cell2_sirna10_7.pt").groupdict() == {"cell_type_index": "2", "sirna_index": "10",
                                                                        "i": "7"}
    assert index.fullmatch("images/cellx_sirna10_7.pt") is None


def test_settings_problems_and_presets():
    sit = settings_of({"folder": "x", "layout": "sit"}, 64)
    assert (sit.value_range, sit.channels, sit.resolution) == ("[0,1]", "six", 64)
    keys = [key for key, _, _ in settings_problems(sit)]
    assert keys == ["generated.external.vocabulary.cell_type", "generated.external.vocabulary.sirna"]
    cellflux = settings_of({"folder": "x", "layout": "cellflux", "cell_type": "HUVEC"}, 64)
    assert (cellflux.channels, cellflux.resolution, cellflux.crop_px) == ("cellflux_rgb", 96, 96)
    assert not settings_problems(cellflux) and not cellflux.cellprofiler_applicable
    assert cellflux.derived_reference(64) and not sit.derived_reference(64)
    override = settings_of({"folder": "x", "layout": "impa", "cell_type": "RPE", "resolution": 64}, 64)
    assert override.resolution == 64 and override.value_range == "[-1,1]"
    bad = settings_of({"folder": "x", "layout": "pattern", "pattern": "{name}.png"}, 64)
    problems = " | ".join(p for _, p, _ in settings_problems(bad))
    assert "names no siRNA" in problems and "names no cell type" in problems


KNOWN = Known(["HUVEC", "RPE"], {1: "s1", 2: "s2", 3: "s3", 1138: "EMPTY"},
              {"cell_type": {"HUVEC": 5, "RPE": 5}, "sirna_id": {1: 5, 2: 5, 3: 5}})


def _tensor(folder, name, shape=(6, 16, 16)):
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(torch.rand(shape), path)


def test_index_names_read_only_through_the_vocabulary(tmp_path):
    vocabulary = {"cell_type": ["RPE", "HUVEC"], "sirna": [3, "s1"]}
    settings = ExternalSettings(folder=str(tmp_path), layout="sit", vocabulary=vocabulary,
                                pattern="images/cell{cell_type_index}_sirna{sirna_index}_{i}.pt", value_range="[0,1]")
    _tensor(tmp_path, "images/cell1_sirna0_0.pt")
    _tensor(tmp_path, "images/cell0_sirna1_1.pt")
    rows, value_range = check_external(settings, KNOWN)
    assert list(zip(rows["cell_type"], rows["sirna_id"])) == [("RPE", 1), ("HUVEC", 3)] and value_range == "[0,1]"
    _tensor(tmp_path, "images/cell5_sirna0_2.pt")
    with pytest.raises(InputErrors, match="cell_type_index 5 is not in generated.external.vocabulary"):
        check_external(settings, KNOWN, pixels=False)


def test_valid_value_outside_the_declared_vocabulary_is_named(tmp_path):
    """The paper's integer indices given as RxRx1 sirna_id: valid ids, but not what the generator learned."""
    _tensor(tmp_path, "a.pt")
    pd.DataFrame({"path": ["a.pt"], "cell_type": ["HUVEC"], "sirna_id": ["2"]}).to_csv(tmp_path / "m.csv", index=False)
    settings = ExternalSettings(folder=str(tmp_path), manifest=str(tmp_path / "m.csv"),
                                vocabulary={"sirna": [1, 3]})
    with pytest.raises(InputErrors, match="line 2: siRNA 2 \\(s2\\) is valid, but not in the generator's declared "
                                          "training vocabulary"):
        check_external(settings, KNOWN, pixels=False)


def test_every_pattern_problem_at_once_from_headers(tmp_path):
    settings = ExternalSettings(folder=str(tmp_path), layout="pattern", pattern="{cell_type}/{sirna}/{name}.npy",
                                value_range="auto")
    (tmp_path / "HUVEC" / "s1").mkdir(parents=True)
    (tmp_path / "U2OS" / "s1").mkdir(parents=True)
    (tmp_path / "HUVEC" / "s9").mkdir(parents=True)
    np.save(tmp_path / "HUVEC" / "s1" / "ok.npy", np.zeros((16, 16, 6), np.float32))
    np.save(tmp_path / "HUVEC" / "s1" / "three.npy", np.zeros((16, 16, 3), np.float32))
    np.save(tmp_path / "HUVEC" / "s1" / "wide.npy", np.zeros((6, 16, 20), np.float32))
    (tmp_path / "HUVEC" / "s1" / "junk.npy").write_bytes(b"junk")
    np.save(tmp_path / "U2OS" / "s1" / "a.npy", np.zeros((6, 16, 16), np.float32))
    np.save(tmp_path / "HUVEC" / "s9" / "a.npy", np.zeros((6, 16, 16), np.float32))
    (tmp_path / "HUVEC" / "s1" / "notes.txt").write_text("not an image: ignored")
    with pytest.raises(InputErrors) as caught:
        check_external(settings, KNOWN, pixels=False)
    problems = caught.value.problems
    expected = ["HUVEC/s1/junk.npy: unreadable", "HUVEC/s1/three.npy: shape (16, 16, 3) is not 6 stains",
                "HUVEC/s1/wide.npy: image is 20x16 pixels", "HUVEC/s9/a.npy: siRNA `s9` is not in the real data",
                "U2OS/s1/a.npy: cell type `U2OS` is not in the real data"]
    for text in expected:
        assert any(p.startswith(text) for p in problems), (text, problems)
    assert len(problems) == len(expected)
    (tmp_path / "none").mkdir()
    with pytest.raises(InputError, match="no file under the folder matches the pattern"):
        check_external(ExternalSettings(folder=str(tmp_path / "none"), layout="pattern",
                                        pattern="{cell_type}/{sirna}/{name}.npy"), KNOWN, pixels=False)


def test_composite_images_and_out_of_range_values(tmp_path):
    """RGB composites are read as 3 channels; six channel PNGs are not a composite; values out of range are named."""
    Image.fromarray(RNG.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "rgb.png")
    manifest = tmp_path / "m.csv"
    pd.DataFrame({"path": ["rgb.png"], "cell_type": ["HUVEC"], "sirna": ["s1"]}).to_csv(manifest, index=False)
    composite = ExternalSettings(folder=str(tmp_path), manifest=str(manifest), channels="rxrx1_rgb")
    rows, value_range = check_external(composite, KNOWN)
    assert rows["size"].tolist() == [16] and value_range == "uint8"
    np.save(tmp_path / "big.npy", np.full((6, 16, 16), 3.0, np.float32))
    np.save(tmp_path / "fine.npy", RNG.random((6, 16, 16)).astype(np.float32))
    pd.DataFrame({"path": ["big.npy", "fine.npy"], "cell_type": ["HUVEC"] * 2, "sirna": ["s1"] * 2}).to_csv(
        manifest, index=False)
    declared = ExternalSettings(folder=str(tmp_path), manifest=str(manifest), value_range="[0,1]")
    with pytest.raises(InputErrors, match="line 2: values 3 .. 3 are outside the declared value_range \\[0,1\\]"):
        check_external(declared, KNOWN)


def test_real_reference_is_mapped_cropped_and_resized(tmp_path):
    from morphotrust.images import resize_site

    sites = [RNG.integers(0, 255, (6, 40, 40), dtype=np.uint8) for _ in range(3)]
    for i, site in enumerate(sites):
        tifffile.imwrite(tmp_path / f"{i}.tif", site)
    pd.DataFrame({"Metadata_split": ["train"] * 3, "Metadata_stack_index": [2, 0, 1],
                  "Metadata_image_path": [str(tmp_path / f"{i}.tif") for i in range(3)]}).to_parquet(
        tmp_path / "manifest.parquet")
    by_index = {2: sites[0], 0: sites[1], 1: sites[2]}  # stack row k holds the site whose stack index is k
    # whole sites, mapped and resized: exactly the composite of the resized site
    whole = ExternalSettings(folder=None, channels="cellflux_rgb", resolution=20, crop_px=40)
    build_reference(whole, tmp_path / "manifest.parquet", "train", tmp_path / "whole.npy")
    stack = np.load(tmp_path / "whole.npy")
    assert stack.shape == (3, 3, 20, 20) and stack.dtype == np.uint8
    for k, site in by_index.items():
        assert np.array_equal(stack[k], composite_of(resize_site(site, 20), "cellflux_rgb"))
    # crops at native scale: each row a 24-px window of its own site
    crops = ExternalSettings(folder=None, resolution=24, crop_px=24)
    build_reference(crops, tmp_path / "manifest.parquet", "train", tmp_path / "crops.npy")
    stack = np.load(tmp_path / "crops.npy")
    for k, site in by_index.items():
        windows = np.lib.stride_tricks.sliding_window_view(site, (6, 24, 24))[0]
        assert (windows == stack[k]).all(axis=(-3, -2, -1)).any(), k


# --- the known answer: real held-out demo sites in each peer's format -----------------------------------------


def _config(workdir):
    from morphotrust.config import check_config

    return check_config(yaml.safe_load((workdir / "config" / "config.yaml").read_text()))


def _fit(reference_stacks: dict, config, out):
    """Real features of the reference stacks (train, calibration) -> fitted reduction and trust scorer."""
    from morphotrust import reduction, trust
    from morphotrust.features import encoder_from_config, extract, iter_stack, real_split_rows, write_features

    manifest = pd.read_parquet("results/subsets/manifest.parquet")
    paths = {}
    for split, (stack, channels) in reference_stacks.items():
        encoder, batch = encoder_from_config(config["features"], image_channels=channels)
        rows = real_split_rows(manifest, split)
        features = extract(iter_stack(stack, rows["Metadata_stack_index"]), len(rows), encoder, batch)
        paths[split] = out / f"real_{split}.parquet"
        write_features(rows, features, encoder.info, paths[split])
    reduction.fit_stage(paths["train"], reduction.reduction_config(json.dumps(config["reduction"])), out / "reduction")
    for split in paths:
        reduction.transform_stage(out / "reduction", paths[split], out / f"reduced_{split}.parquet")
    trust.fit_stage(out / "reduced_train.parquet", out / "reduced_calibration.parquet",
                    trust.trust_config(json.dumps(config["trust"])), out, progress=False)
    return out / "reduction", out / "scorer"


def _judge(fmt, config, out, fitted):
    """Accepted fraction of true-label and wrong-label copies of `fmt`, scored as the workflow scores them."""
    from morphotrust.features import encoder_from_config, extract, iter_manifest_images
    from morphotrust.generated.peer_copies import write_peer_copies
    from morphotrust.morphology.scale import native_size_px
    from morphotrust.reduction import FeatureReduction
    from morphotrust.trust import TrustScorer

    resolution = config["subsets"]["resolution"]
    manifest = pd.read_parquet("results/subsets/manifest.parquet")
    copies, external = write_peer_copies(manifest, fmt, out / fmt / "images")
    settings = settings_of(external, resolution)
    generated = convert_external(settings, "results/data/sites.parquet", "results/subsets/manifest.parquet",
                                 out / fmt / "generated", native_size_px(config), resolution)
    key = (str(settings.channels), settings.resolution, settings.crop_px)
    if key not in fitted:
        stacks = {}
        for split in ("train", "calibration"):
            if settings.derived_reference(resolution):
                stack = out / "reference" / "_".join(map(str, key)) / f"{split}.npy"
                build_reference(settings, "results/subsets/manifest.parquet", split, stack)
            else:
                stack = f"results/subsets/stacks/{split}.npy"
            stacks[split] = (stack, settings.image_channels)
        fitted[key] = _fit(stacks, config, out / "fit" / "_".join(map(str, key)))
    reduction_path, scorer_path = fitted[key]
    encoder, batch = encoder_from_config(config["features"], image_channels=settings.image_channels)
    features = extract(iter_manifest_images(generated, "generated"), len(generated), encoder, batch)
    scorer = TrustScorer.load(scorer_path)
    scores = scorer.score(FeatureReduction.load(reduction_path).transform(features),
                          {"cell_type": generated["Metadata_cell_type"].to_numpy(),
                           "sirna_id": generated["Metadata_sirna_id"].to_numpy()})
    accepted = pd.Series(scorer.accept(scores), index=generated["Metadata_external_path"])
    kinds = copies.set_index("path")["kind"]
    return {kind: float(accepted[kinds.index[kinds == kind]].mean()) for kind in ("copy", "wrong_label")}


@pytest.fixture(scope="module")
def peer_rates(tiny_demo_run, tmp_path_factory):
    """{format: {copy: accepted fraction, wrong_label: accepted fraction}} on the tiny demo's held-out sites."""
    out = tmp_path_factory.mktemp("peers")
    config, fitted = _config(tiny_demo_run), {}
    with contextlib.chdir(tiny_demo_run):
        return {fmt: _judge(fmt, config, out, fitted) for fmt in ("tiff", "sit", "morphodiff", "cellflux", "impa")}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["sit", "morphodiff", "cellflux", "impa"])
def test_peer_format_judged_like_the_native_tiff(peer_rates, fmt):
    """True-label copies accepted like the native TIFFs, wrong-label copies mostly rejected (six-channel formats
    as in the native run; composites may catch fewer wrong labels, BENCHMARKS.md)."""
    native, mine = peer_rates["tiff"], peer_rates[fmt]
    # the tiny demo (64 sites, a short features setting) accepts 59% of true and 23% of wrong labels natively
    assert native["copy"] >= native["wrong_label"] + 0.25, peer_rates
    if fmt in ("sit", "impa"):  # six stains: the same judgement as the native TIFFs
        assert mine["copy"] >= native["copy"] - 0.1, peer_rates
        assert mine["wrong_label"] <= native["wrong_label"] + 0.1, peer_rates
    else:  # composites: as many true labels accepted, fewer wrong labels caught, but still told apart
        assert mine["copy"] >= native["copy"] - 0.15, peer_rates
        assert mine["wrong_label"] <= mine["copy"] - 0.1, peer_rates


# --- the workflow: one small run through the external path, and the dry-run errors ----------------------------


@pytest.mark.slow
def test_workflow_scores_cellflux_composite_crops(tiny_demo_run, tmp_path):
    """Composite channels + crops through Snakemake: real reference rebuilt, 3-channel features, trust scores, the
    judging notes; CellProfiler not applicable (no morphology job planned for the generated set)."""
    from morphotrust.generated.peer_copies import write_peer_copies

    workdir = workdir_with_results_of(tiny_demo_run, tmp_path, ("data", "subsets"), **TINY_DEMO)
    with contextlib.chdir(workdir):
        _, external = write_peer_copies(pd.read_parquet("results/subsets/manifest.parquet"), "cellflux",
                                        workdir / "images", max_sites_per_condition=2)
    (workdir / "external.yaml").write_text(yaml.safe_dump(
        {"generated": {"source": "external", "external": external}, "generator": {"autoencoder": "none"}}))
    dry = run_snakemake(workdir, "-n", "results/report/summary.html", "--configfile", str(workdir / "external.yaml"))
    assert "external_reference" in dry.stdout and "morphology_prepare" not in dry.stdout
    run_snakemake(workdir, "results/trust/generated_scores.parquet", "--cores", "2",
                  "--configfile", str(workdir / "external.yaml"))
    scores = pd.read_parquet(workdir / "results" / "trust" / "generated_scores.parquet")
    assert len(scores) and scores["T"].notna().all()
    sidecar = json.loads((workdir / "results" / "features" / "real_train.json").read_text())
    assert sidecar["channel_names"] == ["red", "green", "blue"] and sidecar["source"] == "real"
    assert np.load(workdir / "results" / "generated" / "external" / "reference" / "train.npy").shape[1:] == (3, 96, 96)
    judging = json.loads((workdir / "results" / "generated" / "external" / "judging.json").read_text())
    assert any("Composite mode" in s for s in judging["sentences"])
    assert any("CellProfiler validation is not applicable" in s for s in judging["sentences"])


def test_dry_run_lists_every_manifest_problem(tmp_path):
    """`snakemake -n` stops on the external images' problems, every one by line, before any job."""
    workdir = make_workdir(tmp_path, **TINY_DEMO)
    folder = workdir / "gen"
    folder.mkdir()
    torch.save(torch.rand(6, 16, 16), folder / "ok.pt")
    np.save(folder / "three.npy", np.zeros((3, 16, 16), np.float32))
    (folder / "junk.pt").write_bytes(b"junk")
    rows = [("ok.pt", "HUVEC", "1"), ("missing.npy", "HUVEC", "1"), ("three.npy", "HUVEC", "1"),
            ("junk.pt", "HUVEC", "1"), ("ok.pt", "HEK293", "1"), ("ok.pt", "HUVEC", "77")]
    pd.DataFrame(rows, columns=["path", "cell_type", "sirna_id"]).to_csv(folder / "m.csv", index=False)
    (workdir / "external.yaml").write_text(yaml.safe_dump({"generated": {"source": "external", "external": {
        "folder": str(folder), "manifest": str(folder / "m.csv")}}}))
    result = run_snakemake(workdir, "-n", "--configfile", str(workdir / "external.yaml"), check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    for text in ("line 3: missing file(s): missing.npy", "line 4: three.npy: shape (3, 16, 16) is not 6 stains",
                 "line 5: junk.pt: not a tensor file", "line 6: path ok.pt is listed twice",
                 "line 6: cell type `HEK293` is not in the real data", "line 7: sirna_id 77 is not in the real data"):
        assert text in output, (text, output[-3000:])
    pd.DataFrame(columns=["path", "cell_type", "sirna_id"]).to_csv(folder / "m.csv", index=False)
    result = run_snakemake(workdir, "-n", "--configfile", str(workdir / "external.yaml"), check=False)
    assert result.returncode != 0 and "the manifest lists no images" in result.stdout + result.stderr


def test_judging_notes_reach_the_run_summary(tmp_path):
    """What composite mode and crops can and cannot judge, and the detail lost, in the run summary's words."""
    from morphotrust.generated.external import judging_notes
    from morphotrust.report.summary import external_judging

    settings = ExternalSettings(folder="x", layout="cellflux", channels="cellflux_rgb", resolution=64, crop_px=96)
    notes = judging_notes(settings, [96], native_px=512, subsets_resolution=64)
    text = " ".join(notes["sentences"])
    assert "(96 px) are judged at 64 px" in text and "one 96-px crop (native pixels" in text
    assert "Composite mode (cellflux_rgb)" in text and "cannot be seen" in text
    assert "CellProfiler validation is not applicable" in text and notes["derived_reference"]
    six = judging_notes(ExternalSettings(folder="x", resolution=64), [64], native_px=128, subsets_resolution=64)
    assert six["cellprofiler"] == "measured" and not six["derived_reference"]
    (tmp_path / "generated" / "external").mkdir(parents=True)
    (tmp_path / "generated" / "external" / "judging.json").write_text(json.dumps(
        {**notes, "n_images": 5, "value_range": "uint8"}))
    generated = pd.DataFrame({"Metadata_generator": ["external:cellflux"]})
    summary = external_judging(tmp_path, generated)
    assert summary.startswith("5 images (cellflux layout, value range uint8, channels cellflux_rgb) at 64 px.")
    assert "Composite mode" in summary
    assert external_judging(tmp_path, pd.DataFrame({"Metadata_generator": ["standin:copy"]})) is None


def test_schema_lists_the_layouts_ranges_and_mappings_the_code_knows():
    from morphotrust.config import SCHEMA
    from morphotrust.generated.layouts import LAYOUTS
    from morphotrust.images import COMPOSITE_MAPPINGS

    external = yaml.safe_load(SCHEMA.read_text())["properties"]["generated"]["properties"]["external"]["properties"]
    assert tuple(external["layout"]["enum"]) == LAYOUTS
    assert set(external["value_range"]["enum"]) - {None} == {formats.AUTO, *formats.VALUE_RANGES}
    named = [option for option in external["channels"]["anyOf"] if option.get("type") == "string"][0]["enum"]
    assert named == ["six", *COMPOSITE_MAPPINGS]


def test_pixels_that_are_not_numbers_are_stored_as_0_and_said(tmp_path):
    """Issue 23: NaN in another generator's float output is stored as 0 and named (Metadata_image_problem of the
    external manifest, which reaches generated_scores.csv), never passed on silently."""
    from morphotrust.generated.external import read_external

    image = RNG.random((6, 16, 16)).astype(np.float32)
    image[:, :4] = np.nan
    np.save(tmp_path / "nan.npy", image)
    settings = ExternalSettings(folder=str(tmp_path), layout="pattern", pattern="{name}.npy", resolution=16)
    stored, problem = read_external(tmp_path, "nan.npy", settings, "[0,1]")
    assert (stored[:, :4] == 0).all() and stored.dtype == np.uint8
    assert problem == "not a number: 25.0% of the pixels are NaN or infinite (stored as 0)"
    np.save(tmp_path / "fine.npy", RNG.random((6, 16, 16)).astype(np.float32))
    assert read_external(tmp_path, "fine.npy", settings, "[0,1]")[1] == ""
