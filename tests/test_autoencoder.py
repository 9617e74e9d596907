"""Tests of the latent path of the generator (morphotrust.generator.autoencoder and the flow model on its
latents) on CPU with the toy subsets of test_generator."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pandas as pd
import pytest
import torch
from test_generator import RES, config, make_toy_subsets

from morphotrust.errors import InputError
from morphotrust.generator.cli import cli
from morphotrust.generator.autoencoder import (FoldedSDVAE, autoencoder_stage, cosine_learning_rate,
                                               load_autoencoder_checkpoint, load_codec, load_sd_vae, random_crops,
                                               train_autoencoder)
from morphotrust.generator.data import read_images, read_manifest, training_rows
from morphotrust.generator.model import to_model_scale
from morphotrust.generator.sample import run_sampling
from morphotrust.generator.runtime import load_checkpoint
from morphotrust.generator.train import train
from morphotrust.images import read_site

torch.set_num_threads(1)
SMALL_AE = dict(init_weights=None, latent_channels=4, downsample=2, width=8, steps=12, batch_size=4, lr=3e-3,
                warmup=2, checkpoint_every=5, crop=None)


def ae_config(**overrides) -> dict:
    cfg = config(autoencoder="trained")
    cfg["trained_autoencoder"] = dict(cfg["trained_autoencoder"], **{**SMALL_AE, **overrides})
    return cfg


def training_images(toy):
    rows = training_rows(read_manifest(toy / "manifest.parquet"))
    return read_images(toy / "stacks", rows, RES)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_subsets(tmp_path_factory.mktemp("subsets"))


@pytest.fixture(scope="module")
def autoencoder(toy, tmp_path_factory):
    """A small trained autoencoder (x2 downsampling, 4 latent channels) on the toy training split."""
    out = tmp_path_factory.mktemp("autoencoder")
    result = autoencoder_stage(toy / "manifest.parquet", toy / "stacks", out, ae_config(steps=250), RES, "cpu")
    assert result["status"] == "finished"
    return out


# ------------------------------------------------------------------------------------------- trained autoencoder

def test_trained_autoencoder_reduces_its_reconstruction_loss(autoencoder):
    losses = pd.read_csv(autoencoder / "loss.csv")["loss"].to_numpy()
    assert len(losses) == 250
    assert losses[:10].mean() / losses[-10:].mean() > 3, (losses[:10].mean(), losses[-10:].mean())
    meta = json.loads((autoencoder / "autoencoder.json").read_text())
    assert meta["kind"] == "trained" and meta["latent_shape"] == [4, RES // 2, RES // 2]
    psnr = meta["reconstruction"]["psnr_per_stain"]
    assert len(psnr) == 6 and np.mean(psnr) > 20, psnr  # held-out toy sites; squares at new places are hardest
    for name in ("loss.png", "reconstructions.png", "autoencoder.safetensors"):
        assert (autoencoder / name).stat().st_size > 500
    assert torch.load(autoencoder / "checkpoints" / "latest.pt", weights_only=True)["step"] == 250


def test_held_out_reconstructions_are_written_as_a_generated_set(toy, tmp_path):
    """The ceiling's input: every held-out site, round-tripped, requested under its own condition."""
    cfg = ae_config(steps=3)
    out = tmp_path / "generated" / "reconstructions"
    result = autoencoder_stage(toy / "manifest.parquet", toy / "stacks", tmp_path / "ae", cfg, RES, "cpu",
                               reconstructions_dir=out)
    generated = pd.read_parquet(out / "manifest.parquet")
    manifest = read_manifest(toy / "manifest.parquet")
    held_out = manifest[(manifest["Metadata_split"] == "evaluation")
                        & manifest["Metadata_arm"].isin(["seen", "unseen"])].reset_index(drop=True)
    assert len(generated) == len(held_out) == result["meta"]["reconstruction"]["n_sites"]
    assert generated["Metadata_real_site_id"].tolist() == held_out["Metadata_site_id"].tolist()
    assert generated["Metadata_condition"].tolist() == held_out["Metadata_condition"].tolist()
    assert set(generated["Metadata_generator"]) == {"autoencoder:trained"}
    codec = load_codec(tmp_path / "ae" / "autoencoder.json")
    real = read_images(toy / "stacks", held_out.iloc[:2], RES)
    again = codec.decode_uint8(codec.encode_uint8(real))
    for k in range(2):
        assert np.array_equal(read_site(generated["Metadata_image_path"][k]), again[k])


def test_trained_autoencoder_keeps_the_small_bright_objects(autoencoder, toy):
    """The toy's bright squares (14% of the pixels) survive the round trip on the training sites: the
    failure of an L1-only loss, which reconstructs the median (the background)."""
    codec = load_codec(autoencoder)
    x = training_images(toy)
    reconstructed = codec.decode_uint8(codec.encode_uint8(x))
    real_means, reconstructed_means = (a.reshape(len(a), 6, -1).mean(2) for a in (x, reconstructed))
    error = np.abs(real_means - reconstructed_means)  # a lost square costs ~25 grey levels of its channel's mean
    # (median 1-4.4 on the CPUs seen so far: 250 steps train to slightly different weights on each)
    assert np.median(error) < 6 and error.max() < 15, (np.median(error), error.max())


def test_latent_scaling_round_trips(autoencoder, toy):
    """Scaled training latents have mean 0 and std 1 per channel, and unscaling before the decoder is exact:
    decode(encode(x)) equals the bare network's round trip."""
    codec = load_codec(autoencoder / "autoencoder.json")
    x = to_model_scale(torch.from_numpy(training_images(toy)))
    z = codec.encode(x)
    assert z.shape == (len(x), 4, RES // 2, RES // 2)
    per_channel = z.transpose(0, 1).reshape(4, -1)
    assert torch.allclose(per_channel.mean(1), torch.zeros(4), atol=1e-4)
    assert torch.allclose(per_channel.std(1), torch.ones(4), atol=1e-3)
    with torch.no_grad():
        bare = codec.network.decode(codec.network.encode(x))
    assert torch.allclose(codec.decode(z), bare, atol=1e-5)
    assert not torch.allclose(codec.mean, torch.zeros(4))  # the scaling is not the identity


def test_random_crops_are_windows_of_their_images_drawn_for_the_global_batch():
    images = torch.arange(4 * 6 * 16 * 16, dtype=torch.float32).reshape(4, 6, 16, 16)
    crops = random_crops(images, 8, torch.Generator().manual_seed(0))
    assert crops.shape == (4, 6, 8, 8)
    for image, crop in zip(images, crops):
        y, x = divmod(int(crop[0, 0, 0] - image[0, 0, 0]), 16)
        assert torch.equal(crop, image[:, y: y + 8, x: x + 8])
    assert random_crops(images, None, torch.Generator()) is images and random_crops(images, 16, None) is images

    class Rank:  # rank 1 of 2: the second half of the global batch's windows
        size, rank = 2, 1

    whole = random_crops(torch.cat([images, images]), 8, torch.Generator().manual_seed(3))
    assert torch.equal(random_crops(images, 8, torch.Generator().manual_seed(3), Rank()), whole[4:])


def test_autoencoder_learning_rate_warms_up_then_decays_to_zero():
    acfg = dict(lr=1.0, warmup=10, steps=110)
    rates = [cosine_learning_rate(step, acfg) for step in range(111)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0) and rates[10] == pytest.approx(1.0)
    assert rates[60] == pytest.approx(0.5) and rates[110] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(rates[10:], rates[11:]))


def test_killed_and_resumed_autoencoder_equals_uninterrupted(toy, tmp_path):
    """Resumed training equals an uninterrupted run, on random windows (crop) drawn per step."""
    cfg = ae_config(steps=8, checkpoint_every=3, crop=8)
    whole = train_autoencoder(toy / "manifest.parquet", toy / "stacks", tmp_path / "whole", cfg, RES)
    assert whole["status"] == "finished"

    def kill_at_step_5(step):
        if step == 5:
            os.kill(os.getpid(), signal.SIGTERM)

    first = train_autoencoder(toy / "manifest.parquet", toy / "stacks", tmp_path / "split", cfg, RES,
                              on_step=kill_at_step_5)
    assert first["status"] == "interrupted" and first["step"] == 5
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    second = train_autoencoder(toy / "manifest.parquet", toy / "stacks", tmp_path / "split", cfg, RES)
    assert second["status"] == "finished" and second["step"] == 8
    a = load_autoencoder_checkpoint(tmp_path / "whole" / "checkpoints" / "latest.pt")
    b = load_autoencoder_checkpoint(tmp_path / "split" / "checkpoints" / "latest.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert torch.equal(a["losses"], b["losses"])
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "whole" / "loss.csv"),
                                  pd.read_csv(tmp_path / "split" / "loss.csv"))


def test_autoencoder_retrains_on_new_pixels_under_the_same_site_ids(tmp_path, capsys):
    """Issue 26: the same site ids with other pixels are other training data; unchanged data resumes."""
    toy = make_toy_subsets(tmp_path / "toy")
    latest = tmp_path / "ae" / "checkpoints" / "latest.pt"

    def run():
        train_autoencoder(toy / "manifest.parquet", toy / "stacks", tmp_path / "ae", ae_config(steps=3), RES)
        return load_autoencoder_checkpoint(latest)["losses"], capsys.readouterr().err

    first, _ = run()
    again, log = run()
    assert "resuming from" in log and torch.equal(again, first)
    stack = np.load(toy / "stacks" / "train.npy")
    stack[:, :, :4] = 0  # a fixed (or replaced) image region: new pixels, same manifest
    np.save(toy / "stacks" / "train.npy", stack)
    retrained, log = run()
    assert "not resuming" in log and "training data changed" in log
    assert len(retrained) == 3 and not torch.equal(retrained, first)


def test_autoencoder_rejects_a_non_power_of_two_downsampling(toy, tmp_path):
    with pytest.raises(InputError, match="power of two"):
        train_autoencoder(toy / "manifest.parquet", toy / "stacks", tmp_path, ae_config(downsample=3), RES)


# ------------------------------------------------------------------------------------------- SD-VAE folding

def small_vae():
    """AutoencoderKL, the class of sd-vae-ft-mse, scaled down (x2 downsampling) and randomly initialised."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[8, 16],
                         down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                         layers_per_block=1, norm_num_groups=4, sample_size=RES).eval()


def test_sd_vae_path_folds_and_unfolds_six_channels(toy, tmp_path):
    vae = small_vae()
    folded = FoldedSDVAE(vae)
    assert folded.latent_channels == 24 and folded.downsample == 2
    x = to_model_scale(torch.from_numpy(training_images(toy)[:2]))
    with torch.no_grad():
        z = folded.encode(x)
        assert z.shape == (2, 24, RES // 2, RES // 2)
        # stain s of image i is the grey RGB image through the VAE: latent channels 4s .. 4s + 3
        for s in (0, 4):
            grey = x[1:2, s: s + 1].expand(-1, 3, -1, -1)
            assert torch.allclose(z[1:2, 4 * s: 4 * s + 4], vae.encode(grey).latent_dist.mean, atol=1e-5)
        out = folded.decode(z)
        assert out.shape == x.shape
        rgb = vae.decode(z[0:1, 8:12]).sample
        assert torch.allclose(out[0, 2], rgb.mean(dim=1)[0], atol=1e-5)  # decoding averages the stain's RGB
    # both local forms load (never a download): a diffusers folder and a bare .safetensors file
    from safetensors.torch import save_file

    vae.save_pretrained(tmp_path / "folder")
    loaded = load_sd_vae(tmp_path / "folder")
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in vae.state_dict().items())
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(tmp_path / "small.safetensors"))
    with pytest.raises(InputError, match="sd-vae-ft-mse's config"):  # a file is read with SD's own config
        load_sd_vae(tmp_path / "small.safetensors")
    with pytest.raises(InputError, match="not found"):
        load_sd_vae(tmp_path / "missing.safetensors")


def test_sd_vae_stage_fits_the_latent_scaling_and_a_latent_model_trains_on_it(toy, tmp_path):
    small_vae().save_pretrained(tmp_path / "vae")
    cfg = config(autoencoder="sd-vae", sd_vae={"weights": str(tmp_path / "vae")}, preset="tiny/2", steps=3)
    result = autoencoder_stage(toy / "manifest.parquet", toy / "stacks", tmp_path / "ae", cfg, RES, "cpu")
    meta = result["meta"]
    assert meta["kind"] == "sd-vae" and meta["latent_channels"] == 24 and len(meta["latent_std"]) == 24
    assert len(meta["reconstruction"]["psnr_per_stain"]) == 6
    codec = load_codec(tmp_path / "ae" / "autoencoder.json")
    z = codec.encode(to_model_scale(torch.from_numpy(training_images(toy))))
    assert torch.allclose(z.transpose(0, 1).reshape(24, -1).std(1), torch.ones(24), atol=1e-3)
    train(toy / "manifest.parquet", toy / "stacks", tmp_path / "gen", cfg, RES,
          autoencoder=tmp_path / "ae" / "autoencoder.json")
    state = load_checkpoint(tmp_path / "gen" / "checkpoint.pt")
    assert state["model_config"]["channels"] == 24 and state["model_config"]["resolution"] == RES // 2
    assert state["image_resolution"] == RES and state["generator"].endswith("-sdvae")


# ------------------------------------------------------------------------------------------- flow model on latents

@pytest.fixture(scope="module", params=["unet", "tiny/2"])
def latent_model(request, toy, autoencoder, tmp_path_factory):
    out = tmp_path_factory.mktemp("latent_generator")
    cfg = dict(ae_config(), preset=request.param, steps=300, batch_size=12, lr=2e-3, warmup=20, checkpoint_every=1000,
               ema_decay=0.95)
    train(toy / "manifest.parquet", toy / "stacks", out, cfg, RES, autoencoder=autoencoder / "autoencoder.json")
    return out, cfg


def test_tiny_latent_model_overfits_two_conditions(latent_model, autoencoder, toy, tmp_path):
    """On the autoencoder's latents the model's loss falls (U-Net and SiT), and decoded samples follow their
    condition (the cell type's bright channel, the siRNA's channel 4)."""
    out, cfg = latent_model
    losses = pd.read_csv(out / "loss.csv")["loss"].to_numpy()
    assert losses[:10].mean() / losses[-30:].mean() > 3, (losses[:10].mean(), losses[-30:].mean())
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["autoencoder"]["kind"] == "trained" and state["model_config"]["channels"] == 4
    cfg = dict(cfg, samples_per_condition=4, sampling_batch_size=12, sampling_steps=10, guidance_scale=2.0)
    gen = run_sampling(toy / "manifest.parquet", toy / "stacks", out / "checkpoint.pt", tmp_path, cfg,
                       autoencoder=autoencoder / "autoencoder.json")
    images = np.stack([read_site(p) for p in gen["Metadata_image_path"]])
    assert images.shape == (12, 6, RES, RES) and images.dtype == np.uint8
    means = {c: np.mean([read_site(p).reshape(6, -1).mean(1) for p in g["Metadata_image_path"]], axis=0)
             for c, g in gen.groupby("Metadata_condition")}
    assert means["A:1"][0] > means["B:1138"][0] + 10 and means["B:1138"][2] > means["A:1"][2] + 10
    assert means["A:1"][4] > means["B:1138"][4] + 50


@pytest.mark.parametrize("preset", ["unet", "tiny/2"])
def test_killed_and_resumed_latent_training_equals_uninterrupted(preset, toy, autoencoder, tmp_path):
    cfg = dict(ae_config(), preset=preset, steps=8, checkpoint_every=3)
    ae = autoencoder / "autoencoder.json"
    train(toy / "manifest.parquet", toy / "stacks", tmp_path / "whole", cfg, RES, autoencoder=ae)

    def kill_at_step_5(step):
        if step == 5:
            os.kill(os.getpid(), signal.SIGTERM)

    first = train(toy / "manifest.parquet", toy / "stacks", tmp_path / "split", cfg, RES, on_step=kill_at_step_5,
                  autoencoder=ae)
    assert first == {"status": "interrupted", "step": 5}
    assert train(toy / "manifest.parquet", toy / "stacks", tmp_path / "split", cfg, RES, autoencoder=ae) == \
        {"status": "finished", "step": 8}
    a = load_checkpoint(tmp_path / "whole" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "split" / "checkpoint.pt")
    for part in ("model", "ema"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    assert torch.equal(a["losses"], b["losses"])


def test_latent_checkpoint_needs_its_own_autoencoder(latent_model, toy, tmp_path):
    out, cfg = latent_model
    common = ["--manifest", str(toy / "manifest.parquet"), "--stacks-dir", str(toy / "stacks"),
              "--checkpoint", str(out / "checkpoint.pt"), "--out-dir", str(tmp_path / "gen"),
              "--config", json.dumps(dict(cfg, samples_per_condition=1, sampling_steps=2))]
    with pytest.raises(InputError, match="no --autoencoder"):
        cli(["sample", *common])
    other = tmp_path / "other"
    autoencoder_stage(toy / "manifest.parquet", toy / "stacks", other, ae_config(steps=3), RES, "cpu")
    with pytest.raises(InputError, match="differs from the one the generator was trained with"):
        cli(["sample", *common, "--autoencoder", str(other / "autoencoder.json")])
    with pytest.raises(InputError, match="no --autoencoder"):
        train(toy / "manifest.parquet", toy / "stacks", tmp_path / "t", dict(cfg, steps=1), RES)
