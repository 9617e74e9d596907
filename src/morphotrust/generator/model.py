"""SiT-style conditional flow model on six-channel images (pixel space) or their latents (autoencoder.py).

A DiT/SiT transformer (patch embedding, fixed 2-D sin-cos positions, adaLN-Zero blocks) that predicts the
velocity of the linear interpolant

    x_t = t * x_data + (1 - t) * noise,      t in [0, 1],  t = 0 pure noise, t = 1 data (SiT's convention)
    v   = d x_t / d t = x_data - noise.

Conditioning is compositional: one embedding table per attribute (cell type, siRNA), summed with the time
embedding. Each table has one extra row after the real values, the null token used for classifier-free
guidance, so the null token can never coincide with a real value (the reference code used index 1138, which
is RxRx1's negative control).

The network outputs the velocity directly (S/2, B/2) or, for the large-patch CPU preset `tiny`, the clean image
converted to the velocity of the same interpolant (see PRESETS); either way `SiT.forward` returns a velocity.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ATTRIBUTES = ("cell_type", "sirna_id")

# depth, hidden size, attention heads, patch size, output parametrisation. S/2 and B/2 follow SiT (patch 2,
# the network outputs the velocity). tiny is sized for a CPU demo at 64 px: 64 tokens of 8x8 patches. A patch
# then holds 384 values, more than a 128-d token can carry, so a network that outputs the velocity
# x_data - noise cannot pass the noise through and its samples keep patch-shaped noise. tiny therefore
# outputs the clean image x̂ and turns it into the velocity of the same interpolant, v = (x̂ - x_t) / (1 - t)
# ("data" parametrisation, as JiT, Li & He 2025); the loss is still the velocity MSE and the samplers the same.
# Config generator.prediction overrides the preset's choice (e.g. velocity for tiny, as SiT).
# On latents (generator.autoencoder trained or sd-vae) the patch is 2 as in SiT: tiny/2 is the CPU demo's latent
# model (64 tokens on a 16 x 16 latent, i.e. 64 px with downsampling 4), S/2, B/2 and XL/2 are SiT's sizes
# (the paper: B/2 on SD-VAE latents, 256 tokens at 256 px).
PRESETS = {
    "tiny": dict(depth=4, hidden=128, heads=4, patch=8, prediction="data"),
    "tiny/2": dict(depth=4, hidden=128, heads=4, patch=2, prediction="velocity"),
    "S/2": dict(depth=12, hidden=384, heads=6, patch=2, prediction="velocity"),
    "B/2": dict(depth=12, hidden=768, heads=12, patch=2, prediction="velocity"),
    "XL/2": dict(depth=28, hidden=1152, heads=16, patch=2, prediction="velocity"),
}
# The data parametrisation divides by 1 - t; near t = 1 the divisor is clipped (JiT uses 0.05).
MIN_ONE_MINUS_T = 0.05


PREDICTIONS = ("velocity", "data")


def model_config(preset: str, resolution: int, vocab_sizes: dict[str, int], channels: int = 6,
                 prediction: str = "preset") -> dict:
    """Everything needed to rebuild the model: preset sizes, resolution, vocabulary sizes (plain types only).
    `prediction` overrides the preset's output parametrisation ("velocity" or "data"; "preset" keeps it)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; expected one of {sorted(PRESETS)}")
    sizes = dict(PRESETS[preset])
    if prediction != "preset":
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; expected preset or one of {PREDICTIONS}")
        sizes["prediction"] = prediction
    if resolution % sizes["patch"]:
        raise ValueError(f"resolution {resolution} is not a multiple of the {preset} patch size {sizes['patch']}")
    return dict(preset=preset, resolution=int(resolution), channels=int(channels),
                vocab_sizes={k: int(vocab_sizes[k]) for k in ATTRIBUTES}, **sizes)


def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def sincos_2d(embed_dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding, (grid*grid, embed_dim), as in DiT/MAE."""
    coords = torch.arange(grid, dtype=torch.float64)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    quarter = embed_dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    parts = []
    for pos in (yy.reshape(-1), xx.reshape(-1)):
        angles = pos[:, None] * omega[None, :]
        parts += [torch.sin(angles), torch.cos(angles)]
    return torch.cat(parts, dim=1).float()


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t):
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        # t in [0, 1] is scaled to [0, 1000] so the frequencies cover it like DiT's integer timesteps.
        args = (t.float() * 1000.0)[:, None] * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Transformer block with adaLN-Zero conditioning (DiT)."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden, heads)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        inner = int(hidden * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(hidden, inner), nn.GELU(approximate="tanh"), nn.Linear(inner, hidden))
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))

    def forward(self, x, c):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN(c).chunk(6, dim=1)
        x = x + gate1.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    def __init__(self, hidden: int, patch: int, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden, patch * patch * channels)
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x, c):
        shift, scale = self.adaLN(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


class SiT(nn.Module):
    """Velocity model v(x_t, t, cell_type, sirna). Attribute inputs are vocabulary indices; index
    `vocab_sizes[attr]` (one past the last real value) is that attribute's null token. With the "data"
    parametrisation the transformer outputs x̂ and forward returns (x̂ - x_t) / (1 - t)."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = dict(config)
        hidden, patch, channels = config["hidden"], config["patch"], config["channels"]
        self.patch, self.channels = patch, channels
        self.grid = config["resolution"] // patch
        self.patch_embed = nn.Conv2d(channels, hidden, kernel_size=patch, stride=patch)
        self.register_buffer("pos_embed", sincos_2d(hidden, self.grid)[None], persistent=False)
        self.t_embed = TimestepEmbedder(hidden)
        # One table per attribute, V real rows + 1 null row.
        self.attr_embed = nn.ModuleDict(
            {a: nn.Embedding(config["vocab_sizes"][a] + 1, hidden) for a in ATTRIBUTES})
        self.blocks = nn.ModuleList([Block(hidden, config["heads"]) for _ in range(config["depth"])])
        self.final = FinalLayer(hidden, patch, channels)
        self._init_weights()

    def null_index(self, attribute: str) -> int:
        return self.config["vocab_sizes"][attribute]

    def _init_weights(self):
        def basic(module):
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        self.apply(basic)
        w = self.patch_embed.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        for table in self.attr_embed.values():
            nn.init.normal_(table.weight, std=0.02)
        for layer in (self.t_embed.mlp[0], self.t_embed.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        # adaLN-Zero: every block starts as the identity, the output as zero.
        for block in self.blocks:
            nn.init.zeros_(block.adaLN[-1].weight)
            nn.init.zeros_(block.adaLN[-1].bias)
        for layer in (self.final.adaLN[-1], self.final.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def unpatchify(self, x):
        b, p, c, g = x.shape[0], self.patch, self.channels, self.grid
        x = x.reshape(b, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(b, c, g * p, g * p)

    def forward(self, x, t, cell_type, sirna_id, hidden_block: int | None = None):
        """Velocity for images `x` (B, C, R, R) in [-1, 1] scale at times `t` (B,).

        With `hidden_block=k`, also return the token-mean of block k's output (B, hidden): the pooled hidden
        state the during-generation translator reads.
        """
        h = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed
        c = self.t_embed(t) + self.attr_embed["cell_type"](cell_type) + self.attr_embed["sirna_id"](sirna_id)
        pooled = None
        for k, block in enumerate(self.blocks):
            h = block(h, c)
            if k == hidden_block:
                pooled = h.float().mean(dim=1)
        out = self.unpatchify(self.final(h, c))
        if self.config["prediction"] == "data":
            one_minus_t = (1 - t.float()).clamp(min=MIN_ONE_MINUS_T).view(-1, 1, 1, 1)
            out = (out.float() - x.float()) / one_minus_t
        return (out, pooled) if hidden_block is not None else out


def interpolate(x_data, noise, t):
    """The linear interpolant the model is trained on: x_t = t x_data + (1 - t) noise; returns (x_t, v)."""
    tt = t.view(-1, *([1] * (x_data.dim() - 1)))
    return tt * x_data + (1 - tt) * noise, x_data - noise


def to_model_scale(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images_uint8.float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255], clipped and rounded."""
    return ((x.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
