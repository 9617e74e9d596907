"""Channel-adaptive ViTs (OpenPhenom, ChAda-ViT families) from local files in the families' own key layouts.

The weight files are random-init, written here in each family's layout independently of
morphotrust.features.channel_vit: OpenPhenom's through timm's VisionTransformer built as maes_microscopy
builds it, ChAda-ViT's from its table of parameter names and shapes; so a renaming or shape error in the loader
makes these tests fail.
"""

import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from morphotrust import features as F  # noqa: E402
from morphotrust.config import CHANNEL_ADAPTIVE_ENCODERS, check_config  # noqa: E402
from morphotrust.features import channel_vit as CV  # noqa: E402
from morphotrust.features.cli import cli  # noqa: E402
from morphotrust.errors import InputError  # noqa: E402

torch.set_num_threads(1)
FEATURES = check_config({})["features"]  # the schema's defaults
SMALL = 64  # input px for most tests: 4 x 4 patches per stain


def random_sites(n, size=48, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 200, (6, size, size), dtype=np.uint8) for _ in range(n)]


def openphenom_sincos(dim, grid, channels):
    """OpenPhenom's fixed table, written out from maes_microscopy vit.py: zero class row, then the grid's
    [sin h, cos h, sin w, cos w] repeated once per channel."""
    quarter = dim // 4
    freqs = 1.0 / 10000.0 ** (np.arange(quarter) / quarter)
    h, w = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    h, w = np.outer(h.ravel(), freqs), np.outer(w.ravel(), freqs)
    table = np.concatenate([np.sin(h), np.cos(h), np.sin(w), np.cos(w)], axis=1)
    return torch.from_numpy(np.concatenate([np.zeros((1, dim)), np.tile(table, (channels, 1))])[None]).float()


def openphenom_state(seed=0):
    """OpenPhenom's checkpoint layout: {"state_dict": encoder.vit_backbone.* (timm 0.9 ViT-S/16, 256 px, one input
    channel, ParallelScalingBlock, global_pool avg) + decoder keys}."""
    from timm.models.vision_transformer import ParallelScalingBlock, VisionTransformer

    torch.manual_seed(seed)
    vit = VisionTransformer(img_size=256, patch_size=16, in_chans=1, embed_dim=384, depth=12, num_heads=6,
                            num_classes=0, global_pool="avg", fc_norm=None, class_token=True, init_values=1e-4,
                            block_fn=ParallelScalingBlock, qkv_bias=False, qk_norm=True)
    state = {k: v.clone() for k, v in vit.state_dict().items()}
    state["pos_embed"] = openphenom_sincos(384, 16, 11)
    with torch.no_grad():  # timm's init leaves norms at 1/0 and LayerScale at 1e-4: make every tensor count
        for key, value in state.items():
            if key != "pos_embed":
                value.add_(torch.randn_like(value) * 0.05)
    full = {f"encoder.vit_backbone.{k}": v for k, v in state.items()}
    full["decoder.mask_token"] = torch.zeros(1, 1, 256)
    full["encoder_decoder_proj.weight"] = torch.randn(256, 384)
    return {"state_dict": full}


CHADA_SHAPES = {  # nicoboou/chadavit ChAdaViT(embed_dim=192, patch_size=16, max_number_channels=10, img_size=224)
    "cls_token": (1, 1, 192), "channel_token": (1, 10, 1, 192), "pos_embed": (1, 1, 197, 192),
    "token_learner.proj.weight": (192, 1, 16, 16), "token_learner.proj.bias": (192,),
    "norm.weight": (192,), "norm.bias": (192,),
    **{f"blocks.{i}.{name}": shape for i in range(12) for name, shape in {
        "self_attn.in_proj_weight": (576, 192), "self_attn.in_proj_bias": (576,),
        "self_attn.out_proj.weight": (192, 192), "self_attn.out_proj.bias": (192,),
        "linear1.weight": (2048, 192), "linear1.bias": (2048,), "linear2.weight": (192, 2048), "linear2.bias": (192,),
        "norm1.weight": (192,), "norm1.bias": (192,), "norm2.weight": (192,), "norm2.bias": (192,)}.items()},
}


def chada_state(seed=0):
    """ChAda-ViT's solo-learn/Lightning checkpoint: {"state_dict": backbone.* + momentum_backbone.* + head}."""
    gen = torch.Generator().manual_seed(seed)
    backbone = {k: (torch.rand(s, generator=gen) + 0.5 if "norm" in k and len(s) == 1
                    else torch.randn(s, generator=gen) * 0.05) for k, s in CHADA_SHAPES.items()}
    full = {f"backbone.{k}": v for k, v in backbone.items()}
    full.update({f"momentum_backbone.{k}": v.clone() for k, v in backbone.items()})
    full["head.mlp.0.weight"] = torch.randn(2048, 192, generator=gen)
    return {"state_dict": full}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Per family: a weights file in its published form (OpenPhenom: torch zip named model.safetensors;
    ChAda-ViT: a Lightning .ckpt) and the state it holds."""
    folder = tmp_path_factory.mktemp("weights")
    out = {}
    for name, state, filename in (("openphenom", openphenom_state(), "model.safetensors"),
                                  ("chada_vit", chada_state(), "chadavit16-moyen.ckpt")):
        torch.save(state, folder / filename)
        out[name] = (folder / filename, state["state_dict"])
    return out


@pytest.fixture(scope="module")
def encoders(files):
    return {name: F.load_encoder(name, str(path), "all", image_size=SMALL, device="cpu", threads=1)
            for name, (path, _) in files.items()}


def test_family_names_agree_with_the_torch_free_list():
    assert CHANNEL_ADAPTIVE_ENCODERS == tuple(CV.FAMILIES)


@pytest.mark.parametrize("name, prefix, anchor, block_key", [
    ("openphenom", "encoder.vit_backbone.", "patch_embed.proj", "blocks.11.in_proj.weight"),
    ("chada_vit", "backbone.", "token_learner.proj", "blocks.11.self_attn.in_proj_weight")])
def test_family_layout_loads_every_tensor_by_the_key_mapping(files, name, prefix, anchor, block_key):
    path, state = files[name]
    model, info = CV.load_channel_vit(name, path)
    loaded = model.state_dict()
    assert torch.equal(loaded["patch_embed.weight"], state[f"{prefix}{anchor}.weight"])
    assert torch.equal(loaded["cls_token"], state[f"{prefix}cls_token"])
    assert torch.equal(loaded[block_key], state[prefix + block_key])
    own = [k for k in state if k.startswith(prefix)]
    assert info["key_mapping"]["tensors_loaded"] == len(own) == len(loaded)
    assert info["key_mapping"]["tensors_ignored"] == len(state) - len(own) > 0  # decoder / momentum / head
    if name == "chada_vit":
        assert torch.equal(loaded["channel_embed"], state["backbone.channel_token"])


@pytest.mark.parametrize("name", list(CV.FAMILIES))
@pytest.mark.parametrize("channels", [6, 3])
def test_any_number_of_stains_gives_finite_features_of_the_family_dimension(files, name, channels):
    model, _ = CV.load_channel_vit(name, files[name][0])
    dim = CV.FAMILIES[name].embed_dim
    x = model.normalise(torch.rand(2, channels, SMALL, SMALL) * 255)
    with torch.inference_mode():
        pooled, per_stain = model(x, "all"), model(x, "per_stain")
    assert pooled.shape == (2, dim) and per_stain.shape == (2, channels * dim)
    assert torch.isfinite(pooled).all() and torch.isfinite(per_stain).all()
    assert not torch.allclose(pooled[0], pooled[1])


@pytest.mark.parametrize("name", list(CV.FAMILIES))
def test_native_input_size_six_stains(files, name):
    encoder = F.load_encoder(name, str(files[name][0]), "all", device="cpu", threads=1)
    assert encoder.image_size == CV.FAMILIES[name].image_size
    X = F.extract(random_sites(1, size=64), 1, encoder)
    assert X.shape == (1, CV.FAMILIES[name].embed_dim) and np.isfinite(X).all()


def test_openphenom_pools_the_mean_of_all_patch_tokens(files):
    """OpenPhenom's 'all' feature is the mean of its per-stain means (every stain has as many tokens)."""
    model, _ = CV.load_channel_vit("openphenom", files["openphenom"][0])
    x = model.normalise(torch.rand(1, 6, SMALL, SMALL) * 255)
    with torch.inference_mode():
        pooled, per_stain = model(x, "all"), model(x, "per_stain").reshape(1, 6, -1)
    torch.testing.assert_close(pooled, per_stain.mean(dim=1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(CV.FAMILIES))
@pytest.mark.parametrize("channels", ["all", "per_stain"])
def test_every_stain_changes_the_feature(files, name, channels, encoders):
    """A model that dropped or ignored any one stain would leave that stain's row unchanged."""
    encoder = encoders[name] if channels == "all" else F.load_encoder(
        name, str(files[name][0]), channels, image_size=SMALL, device="cpu", threads=1)
    base = random_sites(1, seed=1)[0]
    replacement = random_sites(1, seed=2)[0]
    changed = []
    for stain in range(6):
        site = base.copy()
        site[stain] = replacement[stain]
        changed.append(site)
    X = F.extract([base, base, *changed], 8, encoder, batch_size=8)
    # The floor: the same site twice in one batch (float noise); a dropped stain would move its row no more.
    floor = max(100 * np.abs(X[1] - X[0]).max(), 1e-5 * np.abs(X[0]).mean())
    for stain in range(6):
        assert np.abs(X[2 + stain] - X[0]).max() > floor, f"stain w{stain + 1} does not reach the feature"
    assert X.shape[1] == CV.FAMILIES[name].embed_dim * (6 if channels == "per_stain" else 1)


def test_wrong_or_damaged_files_are_input_errors_naming_file_and_keys(files, tmp_path):
    phenom_path, phenom = files["openphenom"]
    with pytest.raises(InputError, match=r"chadavit16-moyen.ckpt.*no `patch_embed.proj.weight` key"):
        CV.load_channel_vit("openphenom", files["chada_vit"][0])
    with pytest.raises(InputError, match=r"model.safetensors.*no `token_learner.proj.weight` key"):
        CV.load_channel_vit("chada_vit", phenom_path)

    broken = dict(phenom)
    del broken["encoder.vit_backbone.blocks.3.in_proj.weight"]
    broken["encoder.vit_backbone.blocks.12.in_norm.weight"] = torch.ones(384)
    broken["encoder.vit_backbone.cls_token"] = torch.zeros(1, 1, 768)
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(InputError) as error:
        CV.load_channel_vit("openphenom", tmp_path / "broken.pth")
    message = str(error.value)
    assert "broken.pth" in message and "features.weights" in message
    assert "missing keys (1): blocks.3.in_proj.weight" in message
    assert "unexpected keys (1): blocks.12.in_norm.weight" in message
    assert "cls_token (1, 1, 768) (expected (1, 1, 384))" in message
    assert "OpenPhenom (Recursion Phenom CA-MAE-S/16)" in message  # what was expected
    # the same keys and shapes from the file's header alone (the dry run's check); the good files pass
    header_error = F.weights_problem("openphenom", str(tmp_path / "broken.pth"))
    assert header_error is not None and "unexpected keys (1): blocks.12.in_norm.weight" in header_error.problem
    assert F.weights_problem("openphenom", str(phenom_path)) is None
    assert F.weights_problem("chada_vit", str(files["chada_vit"][0])) is None

    learned = dict(phenom)
    learned["encoder.vit_backbone.pos_embed"] = torch.randn(1, 1 + 11 * 256, 384)
    torch.save({"state_dict": learned}, tmp_path / "learned_pos.pth")
    with pytest.raises(InputError, match="pos_embed is not OpenPhenom's fixed 2-D sin-cos table"):
        CV.load_channel_vit("openphenom", tmp_path / "learned_pos.pth")

    (tmp_path / "pickle.bin").write_bytes(pickle.dumps({"a": object.__name__}))
    with pytest.raises(InputError, match="refused to unpickle"):
        CV.load_channel_vit("chada_vit", tmp_path / "pickle.bin")
    (tmp_path / "cut.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(InputError, match="cut.safetensors.*corrupt or truncated safetensors"):
        CV.load_channel_vit("chada_vit", tmp_path / "cut.safetensors")


def test_bare_keys_in_a_real_safetensors_file_load_too(files, tmp_path):
    from safetensors.torch import save_file

    _, state = files["chada_vit"]
    bare = {k.removeprefix("backbone."): v.contiguous() for k, v in state.items() if k.startswith("backbone.")}
    save_file(bare, str(tmp_path / "model.safetensors"))
    model, info = CV.load_channel_vit("chada_vit", tmp_path / "model.safetensors")
    assert info["key_mapping"]["file_prefix"] == "" and info["key_mapping"]["tensors_ignored"] == 0
    assert torch.equal(model.state_dict()["patch_embed.weight"], bare["token_learner.proj.weight"])


def test_config_errors_for_channel_adaptive_encoders(files, tmp_path):
    path = str(files["openphenom"][0])
    with pytest.raises(InputError, match="features.channels.*not an RGB composite"):
        F.load_encoder("openphenom", path, "composite", image_size=SMALL, device="cpu")
    with pytest.raises(InputError, match="features.weights.*loads from a weights file only"):
        F.load_encoder("openphenom", f"local-dir:{tmp_path}", "all", device="cpu")
    with pytest.raises(InputError, match="features.channels.*`all` needs a channel-adaptive encoder"):
        F.load_encoder(channels="all", image_size=SMALL, device="cpu")
    with pytest.raises(InputError, match="features.image_size.*not a multiple of the patch size 16"):
        F.load_encoder("chada_vit", str(files["chada_vit"][0]), "all", image_size=100, device="cpu")


def test_features_cli_end_to_end_with_sidecar(files, encoders, tmp_path, monkeypatch):
    from morphotrust.images import write_site

    path = files["openphenom"][0]
    monkeypatch.chdir(tmp_path)
    sites = random_sites(5, size=64, seed=3)  # demo-shaped sites: (6, 64, 64) uint8
    np.save("stack.npy", np.stack(sites[:3]))
    pd.DataFrame({"Metadata_site_id": ["a", "b", "c"], "Metadata_split": ["train"] * 3,
                  "Metadata_stack_index": [2, 0, 1]}).to_parquet("manifest.parquet")
    config = json.dumps({**FEATURES, "encoder": "openphenom", "weights": str(path), "channels": "all",
                         "image_size": SMALL, "device": "cpu", "batch_size": 2})
    cli(["real", "--manifest", "manifest.parquet", "--stack", "stack.npy", "--split", "train",
         "--config", config, "--threads", "1", "--out", "features/real_train.parquet"])
    meta, X, info = F.read_features("features/real_train.parquet")
    # the default appends the per-stain statistics to the encoder's features, as for timm encoders
    assert list(meta["Metadata_site_id"]) == ["b", "c", "a"] and X.shape == (3, 384 + 6 * len(F.STATISTIC_NAMES))
    np.testing.assert_allclose(X[:, :384], F.extract(sites[:3], 3, encoders["openphenom"]), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(X[:, 384:], F.stain_statistics(np.stack(sites[:3])))  # stack order
    assert [b["name"] for b in info["feature_blocks"]][:2] == ["encoder", "statistics_w1"]
    assert info["encoder"] == "openphenom" and info["weights"] == str(path)
    assert info["weights_sha256"] == F.sha256_file(path) and len(info["weights_sha256"]) == 64
    assert info["channels"] == "all" and info["architecture"]["embed_dim"] == 384
    assert info["key_mapping"]["file_prefix"] == "encoder.vit_backbone."
    assert "OpenPhenom" in info["weights_description"] and "InstanceNorm" in info["normalisation"]

    for i, site in enumerate(sites[3:]):
        write_site(f"gen/{i}.tif", site)
    pd.DataFrame({"Metadata_sample_id": ["g0", "g1"],
                  "Metadata_image_path": ["gen/0.tif", "gen/1.tif"]}).to_parquet("generated.parquet")
    chada = json.dumps({**FEATURES, "encoder": "chada_vit", "weights": str(files["chada_vit"][0]),
                        "channels": "per_stain", "image_size": SMALL, "device": "cpu", "statistics": "none"})
    cli(["generated", "--manifest", "generated.parquet", "--config", chada, "--out", "features/gen.parquet"])
    meta, X, info = F.read_features("features/gen.parquet")
    assert X.shape == (2, 6 * 192) and np.isfinite(X).all()
    assert info["encoder"] == "chada_vit" and info["weights_sha256"] == F.sha256_file(files["chada_vit"][0])
    assert Path("features/gen.json").is_file()


def test_openphenom_all_ignores_stain_order_chada_vit_does_not(files):
    """OpenPhenom has no channel embedding: its mean over all tokens cannot tell which stain is which (why
    per_stain exists); ChAda-ViT's channel tokens make the order count."""
    torch.manual_seed(0)
    for name, invariant in (("openphenom", True), ("chada_vit", False)):
        # pixel values in [0, 1]: the random channel tokens (std 0.05) then weigh like trained ones would
        x = torch.rand(1, 6, SMALL, SMALL) * (255 if name == "openphenom" else 1)
        swapped = x[:, [1, 0, 2, 3, 4, 5]]
        model, _ = CV.load_channel_vit(name, files[name][0])
        with torch.inference_mode():
            a, b = model(model.normalise(x)), model(model.normalise(swapped))
            a_stains, b_stains = model(model.normalise(x), "per_stain"), model(model.normalise(swapped), "per_stain")
        scale = a.abs().mean()
        moved, moved_stains = (a - b).abs().max() / scale, (a_stains - b_stains).abs().max() / scale
        assert (moved < 1e-5) if invariant else (moved > 1e-4), (name, float(moved))
        assert moved_stains > 1e-3, (name, float(moved_stains))
