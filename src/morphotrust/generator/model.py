"""Conditional flow models on six-channel images (pixel space) or their latents (autoencoder.py).

SiT: a DiT/SiT transformer (patch embedding, fixed 2-D sin-cos positions, adaLN-Zero blocks); UNet: a small
convolutional U-Net (ADM-style residual blocks with scale-shift conditioning, self-attention at the coarsest
level) for the CPU demo on latents. Both predict the velocity of the linear interpolant

    x_t = t * x_data + (1 - t) * noise,      t in [0, 1],  t = 0 pure noise, t = 1 data (SiT's convention)
    v   = d x_t / d t = x_data - noise.

Conditioning is compositional: one embedding table per attribute (cell type, siRNA), summed with the time
embedding. Each table has one extra row after the real values, the null token used for classifier-free
guidance, so the null token can never coincide with a real value (the reference code used index 1138, which
is RxRx1's negative control).

The network outputs the velocity directly (S/2, B/2) or, for the large-patch CPU preset `tiny`, the clean image
converted to the velocity of the same interpolant (see PRESETS); either way `forward` returns a velocity.
`build_network(config)` builds the preset's architecture.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .presets import PREDICTIONS, PRESETS

ATTRIBUTES = ("cell_type", "sirna_id")

# The data parametrisation divides by 1 - t; near t = 1 the divisor is clipped (JiT uses 0.05).
MIN_ONE_MINUS_T = 0.05


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


def norm_groups(channels: int) -> int:
    """GroupNorm groups for a width: 8 where it divides (also the autoencoder's)."""
    return math.gcd(channels, 8)


class ConditionedResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the condition as a scale and shift after the second norm (ADM); the last
    convolution starts at zero, so every block starts as its skip path."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(norm_groups(in_channels), in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.condition = nn.Linear(hidden, 2 * out_channels)
        self.norm2 = nn.GroupNorm(norm_groups(out_channels), out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x, c):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.condition(c)[:, :, None, None].chunk(2, dim=1)
        return self.skip(x) + self.conv2(F.silu(self.norm2(h) * (1 + scale) + shift))


class SpatialAttention(nn.Module):
    """Self-attention over the positions of a feature map (residual, output projection starts at zero)."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(norm_groups(channels), channels)
        self.qkv, self.proj = nn.Conv2d(channels, 3 * channels, 1), nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x):
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).transpose(-1, -2)
        out = F.scaled_dot_product_attention(*qkv.unbind(1))
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class UNet(nn.Module):
    """Velocity model v(x_t, t, cell_type, sirna) as a U-Net: one conditioned residual block per level on the way
    down (stride-2 convolutions between levels) and up (nearest upsampling, the skip concatenated), residual
    block + self-attention + residual block at the coarsest level. Conditioning, null tokens and the "data"
    parametrisation as SiT. Blocks are numbered down, middle, up for `hidden_block` (the translator's input:
    that block's output averaged over positions)."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = dict(config)
        widths, hidden, channels = list(config["widths"]), config["hidden"], config["channels"]
        self.t_embed = TimestepEmbedder(hidden)
        self.attr_embed = nn.ModuleDict(
            {a: nn.Embedding(config["vocab_sizes"][a] + 1, hidden) for a in ATTRIBUTES})
        for table in self.attr_embed.values():
            nn.init.normal_(table.weight, std=0.02)
        self.stem = nn.Conv2d(channels, widths[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        previous = widths[0]
        for level, width in enumerate(widths):
            self.down.append(ConditionedResBlock(previous, width, hidden))
            last = level == len(widths) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(width, width, 3, stride=2, padding=1))
            previous = width
        self.middle = nn.ModuleList([ConditionedResBlock(previous, previous, hidden),
                                     ConditionedResBlock(previous, previous, hidden)])
        self.attention = SpatialAttention(previous, config["heads"])
        self.up = nn.ModuleList()
        for width in reversed(widths):
            self.up.append(ConditionedResBlock(previous + width, width, hidden))
            previous = width
        self.out_norm = nn.GroupNorm(norm_groups(previous), previous)
        self.out = nn.Conv2d(previous, channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        if config["depth"] != 2 * len(widths) + 1:
            raise ValueError(f"a U-Net of {len(widths)} levels has {2 * len(widths) + 1} blocks, not {config['depth']}")

    def null_index(self, attribute: str) -> int:
        return self.config["vocab_sizes"][attribute]

    def forward(self, x, t, cell_type, sirna_id, hidden_block: int | None = None):
        """As SiT.forward: the velocity for `x` (B, C, R, R) at times `t`, with `hidden_block=k` also block k's
        output averaged over positions (B, width of that block)."""
        c = F.silu(self.t_embed(t) + self.attr_embed["cell_type"](cell_type) + self.attr_embed["sirna_id"](sirna_id))
        outputs, skips = [], []
        h = self.stem(x)
        for block, downsample in zip(self.down, self.downsample):
            h = block(h, c)
            outputs.append(h)
            skips.append(h)
            h = downsample(h)
        h = self.middle[1](self.attention(self.middle[0](h, c)), c)
        outputs.append(h)
        for block in self.up:
            skip = skips.pop()
            if h.shape[-1] != skip.shape[-1]:
                h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = block(torch.cat([h, skip], dim=1), c)
            outputs.append(h)
        out = self.out(F.silu(self.out_norm(h)))
        if self.config["prediction"] == "data":
            one_minus_t = (1 - t.float()).clamp(min=MIN_ONE_MINUS_T).view(-1, 1, 1, 1)
            out = (out.float() - x.float()) / one_minus_t
        if hidden_block is None:
            return out
        return out, outputs[hidden_block].float().mean(dim=(2, 3))


def build_network(config: dict) -> nn.Module:
    """The flow model of a model_config: SiT or UNet (configs written before U-Nets existed are SiT)."""
    return UNet(config) if config.get("architecture", "sit") == "unet" else SiT(config)


def interpolate(x_data, noise, t):
    """The linear interpolant the model is trained on: x_t = t x_data + (1 - t) noise; returns (x_t, v)."""
    tt = t.view(-1, *([1] * (x_data.dim() - 1)))
    return tt * x_data + (1 - tt) * noise, x_data - noise


def to_model_scale(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images_uint8.float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255], clipped and rounded; NaN -> 0 (images.nonfinite_problem says so)."""
    return ((torch.nan_to_num(x.float(), nan=-1.0).clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
