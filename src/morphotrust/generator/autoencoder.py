"""How images become the flow model's latents: config generator.autoencoder = trained | sd-vae | none.

- trained: a small convolutional autoencoder (ConvAutoencoder) trained here on the seen arm's train split, before
  the flow model (`morphotrust generator autoencoder`, resumable like train.py). Its loss is L1 plus an image-
  MSE term, an image-gradient term and an FFT-amplitude term: pixel MSE alone blurs, and the trust score's default features reject
  real sites blurred by σ = 0.75 px, so the texture at the pixel scale has to survive the round trip.
- sd-vae: Stable Diffusion's VAE (diffusers' AutoencoderKL, e.g. stabilityai/sd-vae-ft-mse) from a local folder
  or .safetensors file, frozen, with the paper's channel folding: each stain goes through the VAE as a grey RGB
  image, the six 4-channel latents are concatenated (24 channels); decoding averages the RGB of each stain.
- none: the pixel model (images in [-1, 1] are the "latents").

Either latent space is standardised per latent channel with the mean / std of the training latents, fitted
here and saved with the autoencoder (autoencoder.json; trained weights in autoencoder.safetensors, no pickle).
A `Codec` maps model-scale images (float in [-1, 1], B x 6 x R x R) to scaled latents and back.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from ..errors import InputError
from ..io import atomic_path, read_json, write_json, write_parquet
from .data import EpochBatches, TrainingImages, build_vocabularies, data_fingerprint, ignore_stop_signals, \
    read_images, read_manifest, resume_mismatch, training_rows
from .distributed import Team, wrap
from .init_weights import data_signature, load_init_weights
from .model import norm_groups, to_model_scale, to_uint8
from .runtime import resolve_device, save_or_stop, seeded_generator, stop_signals, write_loss_curve

FORMAT = "morphotrust-autoencoder-1"
CHECKPOINT_FORMAT = "morphotrust-autoencoder-checkpoint-1"
STAINS = 6

# diffusers' AutoencoderKL config of stabilityai/sd-vae-ft-mse (and ft-ema, SD 1.x's VAE): used for a bare
# .safetensors file; a diffusers folder brings its own config.json.
SD_VAE_CONFIG = dict(in_channels=3, out_channels=3, latent_channels=4, sample_size=256, layers_per_block=2,
                     norm_num_groups=32, act_fn="silu", block_out_channels=[128, 256, 512, 512],
                     down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)


# ----------------------------------------------------------------------------------------------- networks

class ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.GroupNorm(norm_groups(channels), channels), nn.SiLU(),
                                  nn.Conv2d(channels, channels, 3, padding=1),
                                  nn.GroupNorm(norm_groups(channels), channels), nn.SiLU(),
                                  nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x):
        return x + self.body(x)


def autoencoder_config(cfg: dict, channels: int = STAINS) -> dict:
    """Network sizes from config generator.trained_autoencoder (plain types, stored with the weights)."""
    downsample = int(cfg["downsample"])
    if downsample < 1 or downsample & (downsample - 1):
        raise InputError(f"downsample {downsample}", where="config generator.trained_autoencoder.downsample",
                         expected="a power of two (1, 2, 4, 8, ...)")
    return dict(channels=int(channels), latent_channels=int(cfg["latent_channels"]), downsample=downsample,
                width=int(cfg["width"]))


class ConvAutoencoder(nn.Module):
    """Deterministic convolutional autoencoder: log2(downsample) stride-2 stages, channel widths
    width, 2 width, 4 width (capped), a residual block per stage below full resolution (full-resolution
    residual blocks cost most of the compute on a CPU for little gain), no KL term."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = dict(config)
        levels = int(math.log2(config["downsample"]))
        widths = [config["width"] * min(2 ** i, 4) for i in range(levels + 1)]
        encoder = [nn.Conv2d(config["channels"], widths[0], 3, padding=1)]
        for i in range(levels):
            encoder += [nn.SiLU(), nn.Conv2d(widths[i], widths[i + 1], 4, stride=2, padding=1), ResBlock(widths[i + 1])]
        encoder += [nn.GroupNorm(norm_groups(widths[-1]), widths[-1]), nn.SiLU(),
                    nn.Conv2d(widths[-1], config["latent_channels"], 1)]
        decoder = [nn.Conv2d(config["latent_channels"], widths[-1], 3, padding=1), ResBlock(widths[-1])]
        for i in reversed(range(levels)):
            decoder += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(widths[i + 1], widths[i], 3, padding=1)]
            if i > 0:
                decoder.append(ResBlock(widths[i]))
        decoder += [nn.SiLU(), nn.Conv2d(widths[0], config["channels"], 3, padding=1)]
        self.encoder, self.decoder = nn.Sequential(*encoder), nn.Sequential(*decoder)

    @property
    def latent_channels(self) -> int:
        return self.config["latent_channels"]

    @property
    def downsample(self) -> int:
        return self.config["downsample"]

    def encode(self, x):
        return self.encoder(x)

    def decode(self, z):
        return self.decoder(z)

    def forward(self, x):
        return self.decode(self.encode(x))


class FoldedSDVAE(nn.Module):
    """The paper's channel folding around a frozen AutoencoderKL: stain s -> grey RGB image -> 4 latent channels;
    latents of the six stains concatenated in stain order; decoding averages each stain's three RGB outputs.
    Encoding uses the posterior mean (deterministic)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        self.vae_channels = int(vae.config.latent_channels)
        self.latent_channels = STAINS * self.vae_channels
        self.downsample = 2 ** (len(vae.config.block_out_channels) - 1)

    def encode(self, x):
        b, c, h, w = x.shape
        grey = x.reshape(b * c, 1, h, w).expand(-1, 3, -1, -1)
        z = self.vae.encode(grey).latent_dist.mean
        return z.reshape(b, c * self.vae_channels, *z.shape[-2:])

    def decode(self, z):
        b, _, h, w = z.shape
        rgb = self.vae.decode(z.reshape(b * STAINS, self.vae_channels, h, w)).sample
        return rgb.mean(dim=1).reshape(b, STAINS, *rgb.shape[-2:])


def load_sd_vae(weights, file=None):
    """AutoencoderKL from a local diffusers folder (config.json + weights) or a diffusers-format .safetensors
    file with sd-vae-ft-mse's architecture. Never downloads."""
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        raise InputError("generator.autoencoder is sd-vae but the diffusers package is not installed",
                         where="config generator.autoencoder", expected="pip install diffusers (requirements.txt)") \
            from None
    where = "config generator.sd_vae.weights"
    if not weights:
        raise InputError("no weights given", file=file, where=where,
                         expected="a local folder or .safetensors file of stabilityai/sd-vae-ft-mse (README)")
    path = Path(weights)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise InputError("folder has no config.json", file=path, where=where,
                             expected="a diffusers AutoencoderKL folder (hf download stabilityai/sd-vae-ft-mse)")
        return AutoencoderKL.from_pretrained(path, local_files_only=True)
    if path.suffix != ".safetensors" or not path.exists():
        raise InputError("SD-VAE weights not found" if not path.exists() else "not a .safetensors file", file=path,
                         where=where, expected="a local diffusers folder or a .safetensors file")
    from safetensors.torch import load_file

    vae = AutoencoderKL(**SD_VAE_CONFIG)
    try:
        vae.load_state_dict(load_file(str(path)))
    except RuntimeError as error:
        raise InputError(f"weights do not fit AutoencoderKL with sd-vae-ft-mse's config ({str(error)[:300]})",
                         file=path, where=where,
                         expected="diffusion_pytorch_model.safetensors of stabilityai/sd-vae-ft-mse (diffusers format)") \
            from None
    return vae


def file_fingerprint(path) -> str:
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for p in files:
        digest.update(p.name.encode())
        with open(p, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------- codecs

class Codec:
    """Model-scale images (B, 6, R, R) in [-1, 1] <-> scaled latents (B, C, R/f, R/f), C and f the latent
    channels and downsampling factor. `network` None is the pixel model (identity)."""

    def __init__(self, kind: str, network=None, mean=None, std=None, fingerprint: str = "none"):
        self.kind, self.network, self.fingerprint = kind, network, fingerprint
        channels = STAINS if network is None else network.latent_channels
        self.mean = torch.zeros(channels) if mean is None else torch.as_tensor(mean, dtype=torch.float32)
        self.std = torch.ones(channels) if std is None else torch.as_tensor(std, dtype=torch.float32)

    @property
    def latent_channels(self) -> int:
        return STAINS if self.network is None else self.network.latent_channels

    @property
    def downsample(self) -> int:
        return 1 if self.network is None else self.network.downsample

    def latent_shape(self, resolution: int) -> tuple[int, int, int]:
        if resolution % self.downsample:
            raise InputError(f"resolution {resolution} is not a multiple of the autoencoder's downsampling factor "
                             f"{self.downsample}", where="config subsets.resolution",
                             expected=f"a multiple of {self.downsample}")
        side = resolution // self.downsample
        return self.latent_channels, side, side

    def to(self, device):
        if self.network is not None:
            self.network.to(device)
        self.mean, self.std = self.mean.to(device), self.std.to(device)
        return self

    def describe(self) -> dict:
        return dict(kind=self.kind, fingerprint=self.fingerprint, latent_channels=self.latent_channels,
                    downsample=self.downsample)

    def _view(self, v):
        return v.view(1, -1, 1, 1)

    @torch.no_grad()
    def encode(self, x):
        if self.network is None:
            return x.float()
        return (self.network.encode(x.float()).float() - self._view(self.mean)) / self._view(self.std)

    @torch.no_grad()
    def decode(self, z):
        if self.network is None:
            return z.float()
        return self.network.decode(z.float() * self._view(self.std) + self._view(self.mean)).float()

    def encode_uint8(self, images, batch_size: int = 32, progress: bool = False, device="cpu") -> torch.Tensor:
        """Scaled latents of uint8 images (N, 6, R, R), on CPU, in batches."""
        out = []
        for s in tqdm(range(0, len(images), batch_size), desc="encode", unit="batch", disable=not progress,
                      file=sys.stderr, mininterval=5):
            x = to_model_scale(torch.from_numpy(np.asarray(images[s: s + batch_size]))).to(device)
            out.append(self.encode(x).cpu())
        return torch.cat(out)

    def decode_uint8(self, z, batch_size: int = 32, device="cpu") -> np.ndarray:
        out = [to_uint8(self.decode(z[s: s + batch_size].to(device))).cpu().numpy()
               for s in range(0, len(z), batch_size)]
        return np.concatenate(out)


PIXELS = Codec("none")


def codec_for(cfg: dict, autoencoder, device) -> Codec:
    """The codec of config generator.autoencoder: the pixel identity for none, else the autoencoder stage's."""
    if cfg["autoencoder"] == "none":
        return PIXELS
    if autoencoder is None:
        raise InputError(f"generator.autoencoder is {cfg['autoencoder']} but no --autoencoder was given",
                         where="config generator.autoencoder", expected="the autoencoder rule's autoencoder.json")
    codec = load_codec(autoencoder, device)
    if codec.kind != cfg["autoencoder"]:
        raise InputError(f"autoencoder is {codec.kind}, config says {cfg['autoencoder']}", file=autoencoder,
                         expected="the output of the autoencoder rule run with this config (rerun it)")
    return codec


def checkpoint_codec(state: dict, autoencoder, device, checkpoint_path="checkpoint") -> Codec:
    """The codec a generator checkpoint was trained with, checked against the autoencoder file given."""
    described = state.get("autoencoder", PIXELS.describe())
    if described["kind"] == "none":
        return PIXELS
    if autoencoder is None:
        raise InputError(f"the checkpoint works on {described['kind']} latents but no --autoencoder was given",
                         file=checkpoint_path, expected="the autoencoder rule's autoencoder.json")
    codec = load_codec(autoencoder, device)
    if codec.describe() != described:
        raise InputError("the autoencoder differs from the one the generator was trained with", file=autoencoder,
                         expected=f"{described} (rerun the train rule)")
    return codec


def latent_scaling(latents: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std over images and positions of (N, C, h, w) raw latents."""
    flat = latents.double().transpose(0, 1).reshape(latents.shape[1], -1)
    std = flat.std(dim=1).clamp(min=1e-6)
    return flat.mean(dim=1).tolist(), std.tolist()


def load_codec(path, device="cpu") -> Codec:
    """The codec written by `generator autoencoder` (its autoencoder.json, or the folder holding it);
    None is the pixel model."""
    if path is None:
        return PIXELS
    path = Path(path)
    meta_path = path / "autoencoder.json" if path.is_dir() else path
    if not meta_path.exists():
        raise InputError("autoencoder description not found", file=meta_path,
                         expected="the output of the autoencoder rule (results/autoencoder/autoencoder.json)")
    meta = read_json(meta_path)
    if meta.get("format") != FORMAT:
        raise InputError("not a morphotrust autoencoder description", file=meta_path, expected=f"format {FORMAT}")
    if meta["kind"] == "trained":
        from safetensors.torch import load_file

        network = ConvAutoencoder(meta["network"])
        network.load_state_dict(load_file(str(meta_path.with_suffix(".safetensors"))))
    else:
        network = FoldedSDVAE(load_sd_vae(meta["weights"], meta_path))
    network.eval().requires_grad_(False)
    return Codec(meta["kind"], network, meta["latent_mean"], meta["latent_std"], meta["fingerprint"]).to(device)


# ----------------------------------------------------------------------------------------------- training

def reconstruction_loss(reconstruction, target, cfg: dict) -> tuple[torch.Tensor, dict]:
    """L1 + mse_weight * MSE + gradient_weight * L1 of the image gradients + fft_weight * L1 of log FFT
    amplitudes. L1 alone settles on the median and leaves out small bright objects (nuclei on a dark
    background) for a long time; the MSE term pulls them in. The last two penalise lost edges and lost
    high-frequency power (blur), which L1 / MSE alone tolerate."""
    l1 = (reconstruction - target).abs().mean()
    mse = ((reconstruction - target) ** 2).mean()
    gradient = sum(((torch.diff(reconstruction, dim=d) - torch.diff(target, dim=d)).abs().mean()) for d in (-1, -2))
    amplitude = lambda x: torch.log1p(torch.fft.rfft2(x.float(), norm="ortho").abs())  # noqa: E731
    fft = (amplitude(reconstruction) - amplitude(target)).abs().mean()
    total = l1 + cfg["mse_weight"] * mse + cfg["gradient_weight"] * gradient + cfg["fft_weight"] * fft
    return total, dict(l1=float(l1.detach()), mse=float(mse.detach()), gradient=float(gradient.detach()), fft=float(fft.detach()))


def psnr_per_stain(real_uint8: np.ndarray, reconstructed_uint8: np.ndarray) -> list[float]:
    """PSNR (dB, peak 255) per stain over all pixels of all images."""
    diff = real_uint8.astype(np.float64) - reconstructed_uint8.astype(np.float64)
    mse = (diff ** 2).mean(axis=(0, 2, 3))
    return [float(10 * np.log10(255.0 ** 2 / max(m, 1e-12))) for m in mse]


def train_autoencoder(manifest_path, stacks_dir, out_dir, cfg: dict, resolution: int, device: str = "cpu",
                      on_step=None, team: Team = Team()) -> dict:
    """Train (or resume) the ConvAutoencoder on the seen-arm train split; checkpoints/latest.pt holds model,
    optimizer, losses and step, and the data order is EpochBatches' function of (seed, step), so a resumed run
    equals an uninterrupted one on CPU. With a `team` of W torchrun workers it trains data-parallel (DDP) on
    this rank's slice of the global batch W x batch_size (distributed.py); rank 0 writes the files.
    Returns {"status", "step", "network": the trained network}."""
    device = resolve_device(device)
    acfg = cfg["trained_autoencoder"]
    global_batch = acfg["batch_size"] * team.size
    out_dir = Path(out_dir)
    latest = out_dir / "checkpoints" / "latest.pt"
    manifest = read_manifest(manifest_path)
    rows = training_rows(manifest, manifest_path)
    dataset = TrainingImages(stacks_dir, rows, build_vocabularies(rows), resolution)
    config = autoencoder_config(acfg)
    init = dict(init_weights=file_fingerprint(acfg["init_weights"])) if acfg["init_weights"] else {}
    data_id = data_fingerprint(rows, stacks_dir, resolution)
    fingerprint = json.dumps(dict(network=config, data=data_id, resolution=resolution,
                                  seed=cfg["seed"], **init, **{k: dict(acfg, batch_size=global_batch)[k]
                                                               for k in ("lr", "warmup", "steps", "crop", "batch_size",
                                                                         "mse_weight", "gradient_weight",
                                                                         "fft_weight")}),
                             sort_keys=True)  # batch_size: the global batch
    torch.manual_seed(cfg["seed"])
    network = ConvAutoencoder(config).to(device)
    if acfg["init_weights"]:
        signature = data_signature(read_images(stacks_dir, rows, resolution), rows)
        network.load_state_dict(load_init_weights(acfg["init_weights"], "autoencoder", config, signature))
        team.say(f"starting from {acfg['init_weights']}")
    optimizer = torch.optim.AdamW(network.parameters(), lr=acfg["lr"], weight_decay=0.0)
    losses: list[float] = []
    start = 0
    if latest.exists():
        state = load_autoencoder_checkpoint(latest)
        if state["fingerprint"] == fingerprint:
            network.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            losses, start = state["losses"].tolist(), int(state["step"])
            team.say(f"resuming from {latest} at step {start}")
        else:
            team.say(f"not resuming {latest}: {resume_mismatch(state['fingerprint'], fingerprint)}; training from "
                     "scratch")
    forward = wrap(network, team, device)

    def checkpoint(step):
        return dict(format=CHECKPOINT_FORMAT, network=config, fingerprint=fingerprint, step=step,
                    model=network.state_dict(), optimizer=optimizer.state_dict(),
                    losses=torch.tensor(losses, dtype=torch.float64))

    steps = acfg["steps"]
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=EpochBatches(len(dataset), global_batch, cfg["seed"], start, steps, team),
        num_workers=cfg["num_workers"], worker_init_fn=ignore_stop_signals if cfg["num_workers"] else None)
    step = start
    network.train()
    with stop_signals() as stop, tqdm(total=steps, initial=start, desc="autoencoder", unit="step", mininterval=5,
                                      file=sys.stderr, disable=not team.is_main) as bar:
        for images, _, _ in loader:
            windows = random_crops(images, acfg["crop"], seeded_generator(cfg["seed"], step), team)
            x = to_model_scale(windows.to(device))
            for group in optimizer.param_groups:
                group["lr"] = cosine_learning_rate(step, acfg)
            loss, parts = reconstruction_loss(forward(x), x, acfg)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # DDP: the gradients of the global batch's mean loss (equal slices)
            torch.nn.utils.clip_grad_norm_(network.parameters(), 1.0)
            optimizer.step()
            losses.append(team.mean(float(loss.detach()), device))
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}", l1=f"{parts['l1']:.4f}", refresh=False)
            if on_step is not None:
                on_step(step)
            if save_or_stop(team, stop, step, acfg["checkpoint_every"], steps, latest, checkpoint, network, device):
                return {"status": "interrupted", "step": step, "network": network}
    if team.is_main:
        write_losses(losses, acfg, out_dir)
    team.barrier()
    return {"status": "finished", "step": step, "network": network.eval()}


def cosine_learning_rate(step: int, acfg: dict) -> float:
    """Linear warm-up over `warmup` steps, then a cosine decay to 0 at `steps` (a fixed budget ends sharper than a
    constant rate)."""
    warmup, steps = max(acfg["warmup"], 1), acfg["steps"]
    if step < warmup:
        return acfg["lr"] * (step + 1) / warmup
    return acfg["lr"] * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(steps - warmup, 1))))


def random_crops(images: torch.Tensor, crop: int | None, rng: torch.Generator, team: Team = Team()) -> torch.Tensor:
    """A random crop x crop window of every image (this rank's slice of the global batch; the windows of step s
    are drawn for the whole global batch from `rng`, so they do not depend on the number of ranks); None or a
    crop as large as the images: the images. The network is convolutional, so it trains on windows and encodes
    whole images: 32 px windows of 64 px sites make steps ~4x cheaper, and at a fixed CPU budget the extra
    optimizer steps raise held-out PSNR by ~3 dB (BENCHMARKS.md)."""
    side = images.shape[-1]
    if crop is None or crop >= side:
        return images
    n = images.shape[0]
    offsets = torch.randint(0, side - crop + 1, (n * team.size, 2), generator=rng)[team.rank * n: (team.rank + 1) * n]
    return torch.stack([image[:, y: y + crop, x: x + crop] for image, (y, x) in zip(images, offsets.tolist())])


def load_autoencoder_checkpoint(path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise InputError(f"cannot read the checkpoint ({error})", file=path,
                         expected="a morphotrust autoencoder checkpoint") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise InputError("not a morphotrust autoencoder checkpoint", file=path, expected=f"format {CHECKPOINT_FORMAT}")
    return state


def write_losses(losses, acfg, out_dir: Path) -> None:
    write_loss_curve(losses, acfg, out_dir, ylabel="L1 + MSE + gradient + FFT loss", title="autoencoder training loss")


def autoencoder_stage(manifest_path, stacks_dir, out_dir, cfg: dict, resolution: int, device: str = "cpu",
                      on_step=None, team: Team = Team(), reconstructions_dir=None) -> dict:
    """What the autoencoder rule runs: train (trained) or load (sd-vae) the autoencoder, fit the per-channel
    latent scaling on the training latents, and measure reconstructions of held-out real sites (evaluation
    split): per-stain PSNR and a grid, and (`reconstructions_dir`) the reconstructions as a generated set.
    Writes autoencoder.json (+ autoencoder.safetensors for trained).
    Under torchrun (`team`) all ranks train; rank 0 alone then fits the scaling and writes the files."""
    kind = cfg["autoencoder"]
    if kind not in ("trained", "sd-vae"):
        raise InputError(f"autoencoder {kind!r} needs no autoencoder stage", where="config generator.autoencoder",
                         expected="trained or sd-vae")
    device = resolve_device(cfg["device"] if device is None else device)
    out_dir = Path(out_dir)
    manifest = read_manifest(manifest_path)
    rows = training_rows(manifest, manifest_path)
    meta = dict(format=FORMAT, kind=kind, resolution=int(resolution))
    if kind == "trained":
        result = train_autoencoder(manifest_path, stacks_dir, out_dir, cfg, resolution, device, on_step, team)
        if result["status"] == "interrupted" or not team.is_main:
            return result
        network = result["network"]
        from safetensors.torch import save_file

        with atomic_path(out_dir / "autoencoder.safetensors") as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}, str(tmp))
        meta.update(network=network.config, steps=result["step"],
                    fingerprint=file_fingerprint(out_dir / "autoencoder.safetensors"))
    else:
        weights = cfg["sd_vae"]["weights"]
        network = FoldedSDVAE(load_sd_vae(weights)).to(device)
        meta.update(weights=str(weights), fingerprint=file_fingerprint(weights))
        result = {"status": "finished", "step": 0}
    network.eval()
    codec = Codec(kind, network).to(device)  # unscaled: mean 0, std 1
    raw = codec.encode_uint8(read_images(stacks_dir, rows, resolution), progress=True, device=device)
    mean, std = latent_scaling(raw)
    meta.update(latent_channels=codec.latent_channels, downsample=codec.downsample, latent_mean=mean, latent_std=std,
                latent_shape=list(codec.latent_shape(resolution)))
    codec = Codec(kind, network, mean, std, meta["fingerprint"]).to(device)
    meta["reconstruction"] = evaluate_reconstructions(codec, manifest, stacks_dir, resolution, out_dir, device,
                                                      reconstructions_dir)
    write_json(meta, out_dir / "autoencoder.json")
    print(json.dumps(dict(kind=kind, psnr_per_stain=meta["reconstruction"]["psnr_per_stain"])), file=sys.stderr)
    return dict(result, meta=meta)


def evaluation_rows(manifest: pd.DataFrame) -> pd.DataFrame:
    rows = manifest[manifest["Metadata_arm"].isin(["seen", "unseen"]) & (manifest["Metadata_split"] == "evaluation")]
    return rows.reset_index(drop=True)


def evaluate_reconstructions(codec: Codec, manifest: pd.DataFrame, stacks_dir, resolution: int, out_dir: Path,
                             device="cpu", reconstructions_dir=None) -> dict:
    """Per-stain PSNR of held-out real sites after encode -> decode, and reconstructions.png. With
    `reconstructions_dir`, the reconstructions are also written as a generated set (`write_reconstructions`)."""
    rows = evaluation_rows(manifest)
    if rows.empty:
        if reconstructions_dir is not None:
            raise InputError("no held-out real sites (evaluation split of the seen and unseen arms) to reconstruct",
                             file=Path(stacks_dir).parent / "manifest.parquet",
                             expected="evaluation sites in results/subsets (config subsets.evaluation_fraction)")
        return dict(n_sites=0, psnr_per_stain=None, psnr_mean=None)
    real = read_images(stacks_dir, rows, resolution)
    reconstructed = codec.decode_uint8(codec.encode_uint8(real, progress=True, device=device), device=device)
    psnr = psnr_per_stain(real, reconstructed)
    write_reconstruction_grid(real[:8], reconstructed[:8], out_dir / "reconstructions.png")
    if reconstructions_dir is not None:
        write_reconstructions(rows, reconstructed, f"autoencoder:{codec.kind}", reconstructions_dir)
    return dict(n_sites=int(len(rows)), split="evaluation", psnr_per_stain=psnr, psnr_mean=float(np.mean(psnr)))


def write_reconstructions(rows: pd.DataFrame, images: np.ndarray, generator: str, out_dir) -> pd.DataFrame:
    """The reconstructions as a generated set: out_dir/images/*.tif and out_dir/manifest.parquet, each requested
    under its site's own condition. Scored like generations, they are the ceiling of any generator on these
    latents (morphotrust.ceiling), and `generated.source: reconstructions` runs every analysis on them."""
    from ..images import write_site

    out_dir = Path(out_dir)
    ids = [f"reconstruction-{site}" for site in rows["Metadata_site_id"]]
    paths = [out_dir / "images" / f"{sample_id}.tif" for sample_id in ids]
    for path, image in zip(paths, images):
        write_site(path, image)
    table = pd.DataFrame({
        "Metadata_sample_id": ids,
        "Metadata_image_path": [str(p) for p in paths],
        **{c: rows[c].to_numpy() for c in ("Metadata_cell_type", "Metadata_sirna_id", "Metadata_sirna",
                                          "Metadata_condition", "Metadata_arm")},
        "Metadata_source": "generated",
        "Metadata_generator": generator,
        "Metadata_real_site_id": rows["Metadata_site_id"].to_numpy(),
    })
    write_parquet(table, out_dir / "manifest.parquet")
    return table


def write_reconstruction_grid(real: np.ndarray, reconstructed: np.ndarray, path) -> None:
    """PNG: top row real sites (RGB composite), bottom row their reconstructions."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..images import composite_rgb

    n = len(real)
    fig, axes = plt.subplots(2, n, figsize=(1.4 * n, 3.0), squeeze=False)
    for j in range(n):
        for i, image in enumerate((real[j], reconstructed[j])):
            axes[i, j].imshow(composite_rgb(image), interpolation="nearest")
            axes[i, j].set_axis_off()
    axes[0, 0].set_title("real", fontsize=8, loc="left")
    axes[1, 0].set_title("reconstructed", fontsize=8, loc="left")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
