"""Channel-adaptive ViTs: one shared single-channel patch embedding for every stain, all stains in one pass.

A site of C stains (6 for RxRx1; any C up to the family's maximum) is cut into patches stain by stain with ONE
single-channel patch embedding shared by all stains; each stain's patch tokens get the 2-D position embedding
(and, where the family has one, the stain's channel embedding); a class token is prepended and the C x grid²
tokens go through the transformer together, so every stain attends to every other. Two published families,
loaded only from a local weights file (`features.encoder` names the family, `features.weights` the file):

openphenom - Recursion's OpenPhenom (Phenom CA-MAE-S/16) encoder; facts from github.com/recursionpharma/
  maes_microscopy (vit.py, mae_modules.py, huggingface_mae.py; timm 0.9.7) and huggingface.co/recursionpharma/
  OpenPhenom. ViT-S/16: dim 384, 12 timm ParallelScalingBlocks (parallel attention + MLP, no qkv bias, QK
  LayerNorm, LayerScale 1e-4, LayerNorm eps 1e-6), 6 heads, 256 px (16 x 16 patches per stain), up to 11 stains.
  Position: a fixed 2-D sin-cos table, the same for every stain. Channel embedding: none (channel-agnostic).
  Input: pixel / 255, each stain standardised over its own pixels (InstanceNorm2d). Pooling (MAEModel.predict):
  mean of all patch tokens of the last block, no final norm (`all`, 384); per stain concatenated
  (`per_stain`, return_channelwise_embeddings, 384·C).
chada_vit - ChAda-ViT (chadavit16-moyen); facts from github.com/nicoboou/chadavit (src/backbones/vit/
  chada_vit.py, HOW_TO_USE.ipynb). Dim 192, 12 post-norm encoder layers of the repository (norm1 before attention
  and again after the residual, ReLU MLP 2048 wide, LayerNorm eps 1e-5), 2 heads, final LayerNorm eps 1e-6,
  224 px (14 x 14), up to 10 stains. Position: learned, the same for every stain (bicubic interpolation for other
  grids, as DINO). Channel embedding: learned `channel_token` per slot. Input: raw pixel values (no mean/std step
  in the repository's IDRCell100k pipeline). Pooling: the class token after the final norm (`all`,
  return_all_tokens=False, 192); each stain's normalised patch tokens averaged, concatenated (`per_stain`, ours).
  Heads: the pretraining constructor chada_vit() uses 2, the notebook the class default 12; the weights' shapes
  are the same, so the file cannot tell: we follow pretraining (2).

Key mapping (file key -> module key; `rename_key`, inverse `to_file_layout`). The file may be safetensors or a
torch tensor file (a zip-format torch file is read as one whatever its suffix: OpenPhenom's `model.safetensors`
has been published so); a top-level `state_dict` entry is unwrapped. The first prefix of the family's list that
holds the anchor key is taken; keys outside it (decoder, heads, momentum encoder) are ignored and counted.

  openphenom, prefixes `encoder.vit_backbone.`, `vit_backbone.`, none:
    patch_embed.proj.weight (384, 1, 16, 16), .bias -> patch_embed.weight, .bias
    cls_token (1, 1, 384); pos_embed (1, 1 + 11·256, 384), checked to be the sin-cos table
    blocks.{i}.{in_norm, in_proj, mlp_bias, q_norm, k_norm, attn_out_proj, mlp_out_proj, ls.gamma} (kept)
    fc_norm.weight, .bias (kept; loaded but, as in OpenPhenom's predict(), not applied)
  chada_vit, prefixes `backbone.`, `encoder.`, none:
    token_learner.proj.weight (192, 1, 16, 16), .bias -> patch_embed.weight, .bias
    cls_token (1, 1, 192); pos_embed (1, 1, 197, 192); channel_token (1, 10, 1, 192) -> channel_embed
    blocks.{i}.{self_attn.in_proj_weight, self_attn.in_proj_bias, self_attn.out_proj, linear1, linear2, norm1,
    norm2} (kept); norm.weight, .bias (kept)

A file whose keys or shapes differ is an InputError naming the file, the missing, unexpected and misshapen keys
and what the family expects. Tables and sources: docs/channel_adaptive_encoders.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import InputError
from ..weights import listing, architecture_problem, key_problem, read_tensors


@dataclass(frozen=True)
class Family:
    name: str
    description: str
    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int
    image_size: int
    max_channels: int
    prefixes: tuple
    anchor: str
    renames: dict  # file key prefix (after the file prefix) -> module key prefix; unlisted keys keep their name
    normalisation: str
    pooling: dict  # features.channels -> what the feature is


FAMILIES = {
    "openphenom": Family(
        name="openphenom",
        description="OpenPhenom (Recursion Phenom CA-MAE-S/16) channel-agnostic ViT-S/16 encoder",
        embed_dim=384, depth=12, num_heads=6, patch_size=16, image_size=256, max_channels=11,
        prefixes=("encoder.vit_backbone.", "vit_backbone.", ""), anchor="patch_embed.proj.weight",
        renames={"patch_embed.proj.": "patch_embed."},
        normalisation="pixel / 255, then each stain standardised over its own pixels (InstanceNorm2d)",
        pooling={"all": "mean of all stains' patch tokens of the last block (OpenPhenom predict)",
                 "per_stain": "each stain's patch tokens averaged, concatenated in stain order "
                              "(OpenPhenom return_channelwise_embeddings)"},
    ),
    "chada_vit": Family(
        name="chada_vit",
        description="ChAda-ViT (channel adaptive ViT, chadavit16-moyen: 192-d, 12 blocks, patch 16)",
        embed_dim=192, depth=12, num_heads=2, patch_size=16, image_size=224, max_channels=10,
        prefixes=("backbone.", "encoder.", ""), anchor="token_learner.proj.weight",
        renames={"token_learner.proj.": "patch_embed.", "channel_token": "channel_embed"},
        normalisation="raw pixel values as float (no mean/std step, as in the repository's IDRCell100k pipeline)",
        pooling={"all": "class token after the final LayerNorm (ChAda-ViT return_all_tokens=False)",
                 "per_stain": "each stain's patch tokens after the final LayerNorm averaged, concatenated in "
                              "stain order"},
    ),
}
POOLINGS = ("all", "per_stain")


def sincos_table(embed_dim: int, grid: int) -> torch.Tensor:
    """(grid², D) fixed 2-D sin-cos position table of OpenPhenom: [sin h, cos h, sin w, cos w], D/4 frequencies
    1 / 10000^(i / (D/4)), rows in (h, w) order."""
    quarter = embed_dim // 4
    freqs = 1.0 / (10000.0 ** (torch.arange(quarter, dtype=torch.float32) / quarter))
    h, w = torch.meshgrid(torch.arange(grid, dtype=torch.float32), torch.arange(grid, dtype=torch.float32),
                          indexing="ij")
    h, w = torch.outer(h.flatten(), freqs), torch.outer(w.flatten(), freqs)
    return torch.cat([torch.sin(h), torch.cos(h), torch.sin(w), torch.cos(w)], dim=1)


class ChAdaBlock(nn.Module):
    """ChAda-ViT's encoder layer: norm1 before attention and again after the residual, then a post-norm MLP."""

    def __init__(self, dim: int, num_heads: int, hidden: int = 2048):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, x):
        h = self.norm1(x)
        x = self.norm1(x + self.self_attn(h, h, h, need_weights=False)[0])
        return self.norm2(x + self.linear2(F.relu(self.linear1(x))))


class ChannelAdaptiveViT(nn.Module):
    """(B, C, S, S) normalised stains -> (B, D) or, pooled per stain, (B, C·D) features."""

    def __init__(self, family: Family):
        super().__init__()
        self.family = family
        d, p = family.embed_dim, family.patch_size
        self.native_grid = family.image_size // p
        self.patch_embed = nn.Conv2d(1, d, kernel_size=p, stride=p)  # shared by every stain
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        if family.name == "openphenom":
            from timm.models.vision_transformer import ParallelScalingBlock

            table = sincos_table(d, self.native_grid).repeat(family.max_channels, 1)
            self.pos_embed = nn.Parameter(torch.cat([torch.zeros(1, d), table])[None], requires_grad=False)
            norm = partial(nn.LayerNorm, eps=1e-6)
            self.blocks = nn.ModuleList(
                ParallelScalingBlock(d, family.num_heads, qkv_bias=False, qk_norm=True, init_values=1e-4,
                                     norm_layer=norm) for _ in range(family.depth))
            self.fc_norm = norm(d)  # in the file; OpenPhenom's predict() does not apply it
        else:
            self.pos_embed = nn.Parameter(torch.zeros(1, 1, self.native_grid ** 2 + 1, d))
            self.channel_embed = nn.Parameter(torch.zeros(1, family.max_channels, 1, d))
            self.blocks = nn.ModuleList(ChAdaBlock(d, family.num_heads) for _ in range(family.depth))
            self.norm = nn.LayerNorm(d, eps=1e-6)

    def normalise(self, x):
        """(B, C, S, S) float pixel values (as stored, 0-255 for uint8 sites) -> the family's encoder input."""
        if self.family.name == "openphenom":
            return F.instance_norm(x / 255.0, eps=1e-5)
        return x

    def _patch_positions(self, grid: int):
        """(grid², D) position embedding of one stain's patches."""
        d = self.family.embed_dim
        if self.family.name == "openphenom":
            if grid == self.native_grid:
                return self.pos_embed[0, 1:1 + grid * grid]
            return sincos_table(d, grid).to(self.pos_embed)
        table = self.pos_embed[0, 0, 1:]
        if grid == self.native_grid:
            return table
        square = table.reshape(1, self.native_grid, self.native_grid, d).permute(0, 3, 1, 2)
        square = F.interpolate(square, size=(grid, grid), mode="bicubic", align_corners=False)
        return square.permute(0, 2, 3, 1).reshape(grid * grid, d)

    def forward(self, x, pooling: str = "all"):
        b, c, height, width = x.shape
        if height != width or height % self.family.patch_size:
            raise ValueError(f"input {height}x{width}: expected a square multiple of {self.family.patch_size} px")
        if not 1 <= c <= self.family.max_channels:
            raise ValueError(f"{c} channels: {self.family.name} takes 1 to {self.family.max_channels}")
        grid = height // self.family.patch_size
        tokens = self.patch_embed(x.reshape(b * c, 1, height, width))  # one embedding for every stain
        tokens = tokens.flatten(2).transpose(1, 2).reshape(b, c, grid * grid, -1)  # (B, C, N, D)
        tokens = tokens + self._patch_positions(grid)
        cls = self.cls_token.expand(b, -1, -1)
        if self.family.name == "chada_vit":
            tokens = tokens + self.channel_embed[:, :c]
            cls = cls + self.pos_embed[:, 0, :1]
        x = torch.cat([cls, tokens.reshape(b, c * grid * grid, -1)], dim=1)
        for block in self.blocks:
            x = block(x)
        if self.family.name == "chada_vit":
            x = self.norm(x)
            if pooling == "all":
                return x[:, 0]
        patches = x[:, 1:]
        if pooling == "all":
            return patches.mean(dim=1)
        return patches.reshape(b, c, grid * grid, -1).mean(dim=2).reshape(b, -1)


# --------------------------------------------------------------------------------------------------------
# Loading


def rename_key(family: Family, key: str) -> str:
    """Module key of a file key (its file prefix already removed), by the family's rename table."""
    for old, new in family.renames.items():
        if key.startswith(old):
            return new + key[len(old):]
    return key


def _unwrap(tensors: dict) -> dict:
    inner = tensors.get("state_dict")
    return inner if isinstance(inner, dict) else tensors


def family_state(name: str, path, header_only: bool = False) -> tuple[dict, str, int, ChannelAdaptiveViT]:
    """(the module state dict from the file `path`, its key prefix, the count of file tensors left out, the model
    it fits) for the family `name`; an InputError naming the file and the missing, unexpected and misshapen keys
    when they differ. `header_only`: names and shapes from the file's header on a meta model (the dry run)."""
    family = FAMILIES[name]
    path = Path(path)
    tensors = _unwrap(read_tensors(path, where="features.weights", header_only=header_only))
    with torch.device("meta" if header_only else "cpu"):
        model = ChannelAdaptiveViT(family)
    expected = model.state_dict()
    expectation = (f"{family.description} weights: keys {listing(list(expected), 4)} ... under one of the "
                   f"prefixes {', '.join(repr(p) for p in family.prefixes)} (README, 'Cell-aware encoders')")
    prefix = next((p for p in family.prefixes if p + family.anchor in tensors), None)
    if prefix is None:
        problem = architecture_problem(tensors, expected) or "no patch embedding"
        raise InputError(f"no `{family.anchor}` key under the prefixes {family.prefixes}: {problem}", file=path,
                         where="features.weights", expected=expectation)
    state = {rename_key(family, k[len(prefix):]): v for k, v in tensors.items() if k.startswith(prefix)}
    problem = key_problem(state, expected)
    if problem:
        raise InputError(f"{name} weights do not fit ({problem})", file=path, where="features.weights",
                         expected=expectation)
    return state, prefix, len(tensors) - len(state), model


def load_channel_vit(name: str, path) -> tuple[ChannelAdaptiveViT, dict]:
    """The family `name` with the weights of the file `path` (eval mode) and a description for the sidecar."""
    family = FAMILIES[name]
    state, prefix, ignored, model = family_state(name, path)
    if family.name == "openphenom":
        table = torch.cat([torch.zeros(1, family.embed_dim),
                           sincos_table(family.embed_dim, model.native_grid).repeat(family.max_channels, 1)])
        if not torch.allclose(state["pos_embed"][0].float(), table, atol=1e-4):
            raise InputError("pos_embed is not OpenPhenom's fixed 2-D sin-cos table", file=path,
                             where="features.weights", expected=f"{family.description} weights (README, "
                             "'Cell-aware encoders')")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    info = {"weights_description": f"{family.description} from the file {path}",
            "architecture": {"family": name, "embed_dim": family.embed_dim, "depth": family.depth,
                             "num_heads": family.num_heads, "patch_size": family.patch_size,
                             "max_channels": family.max_channels},
            "key_mapping": {"file_prefix": prefix, "renames": dict(family.renames), "tensors_loaded": len(state),
                            "tensors_ignored": ignored},
            "input_normalisation": family.normalisation}
    return model.eval(), info


def random_state_dict(name: str, seed: int = 0) -> dict:
    """A randomly initialised state dict of the family in the module's own key names (tests, benchmarks)."""
    torch.manual_seed(seed)
    model = ChannelAdaptiveViT(FAMILIES[name])
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if key == "pos_embed" and name == "openphenom":
                continue  # a fixed table, not a learned weight
            if "norm" in key and value.ndim == 1:
                value.uniform_(0.5, 1.5)
            else:
                value.normal_(0.0, 0.02)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def to_file_layout(name: str, state: dict, prefix: str | None = None) -> dict:
    """A module state dict renamed back to the family's own file layout (inverse of `rename_key`)."""
    family = FAMILIES[name]
    prefix = family.prefixes[0] if prefix is None else prefix
    inverse = {new: old for old, new in family.renames.items()}
    out = {}
    for key, value in state.items():
        for new, old in inverse.items():
            if key.startswith(new):
                key = old + key[len(new):]
                break
        out[prefix + key] = value
    return out
