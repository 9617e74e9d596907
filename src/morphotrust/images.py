"""Six-channel site images: the canonical on-disk form and the RGB composite people look at.

Canonical form: one TIFF per site holding a `(6, H, W)` array, channel order w1..w6 (RxRx1 stains:
w1 Hoechst/nuclei, w2 ConA/ER, w3 phalloidin/actin, w4 SYTO14/nucleoli+RNA, w5 MitoTracker/mitochondria,
w6 WGA/Golgi+membrane), dtype kept (uint8 for RxRx1 PNGs), zlib-compressed. An external generator that writes
only RGB composites is judged in composite form, `(3, H, W)` uint8 (R, G, B), with the real sites passed through
the same six-to-three mapping (`composite_of`, generated.external.channels).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from .io import atomic_path

N_CHANNELS = 6
IMAGE_PROBLEM = "Metadata_image_problem"  # generated manifests, features, generated_scores: see image_problem
STAINS = ("nuclei", "er", "actin", "nucleoli", "mitochondria", "golgi")

# RGB composite colour map, the convention of Recursion's rxrx1-utils: each stain is scaled linearly
# from its fixed display range (uint8 units) to [0, 1], painted in its colour, and the six colours are
# summed and clipped. Fixed ranges (not per-image stretching) keep absolute intensity comparable
# between sites, which matters when comparing generated with real images.
COMPOSITE_COLOURS = np.array(
    [[19, 0, 249], [42, 255, 31], [255, 0, 25], [45, 255, 252], [250, 0, 253], [254, 255, 40]],
    dtype=np.float32,
) / 255.0
COMPOSITE_RANGES = np.array([[0, 51], [0, 107], [0, 64], [0, 191], [0, 89], [0, 191]], dtype=np.float32)


IMAGE_CHANNELS = (N_CHANNELS, 3)  # six stains, or an RGB composite

# Six stains -> three composite channels (generated.external.channels), in uint8 units, clipped to 0..255.
# cellflux_rgb: CellFlux (github.com/yuhui-zh15/CellFlux, training/data_utils.py `convert_6ch_to_3ch`, applied in
# training/eval_loop.py to images normalised to [-1, 1]): ch1 -> B, ch2 -> G, ch3 -> R, ch4 -> (G + B) / 2,
# ch5 -> (R + B) / 2, ch6 -> (R + G) / 2, clamped to [-1, 1], then (x + 1) / 2, floored to 0..255. Each row's
# weights sum to 2, so in uint8 units a channel is sum(w * v) - 127.5: the -1 of two normalised channels, which
# leaves a dim stain black. CellFlux trains on preprocessed crops whose stains fill the 8-bit range, so each stain
# is first scaled from the fixed display range of the composite colour map (COMPOSITE_RANGES) to 0..255: an
# assumption about that preprocessing (give a 3x6 matrix when yours differs).
CELLFLUX_MATRIX = np.array([[0, 0, 1, 0, 0.5, 0.5], [0, 1, 0, 0.5, 0, 0.5], [1, 0, 0, 0.5, 0.5, 0]], dtype=np.float32)
CELLFLUX_OFFSET = -127.5
COMPOSITE_MAPPINGS = ("rxrx1_rgb", "cellflux_rgb")  # generated.external.channels (the schema lists the same)


def composite_of(image: np.ndarray, mapping) -> np.ndarray:
    """`(6, H, W)` uint8-unit site -> `(3, H, W)` uint8 composite: `rxrx1_rgb` (composite_rgb, the workflow's own
    colour map), `cellflux_rgb` (CellFlux's mixing, above) or a 3x6 matrix (R, G, B rows; v' = M v, clipped)."""
    x = np.asarray(image, dtype=np.float32)
    if isinstance(mapping, str) and mapping == "rxrx1_rgb":
        return np.ascontiguousarray(composite_rgb(image).transpose(2, 0, 1))
    if isinstance(mapping, str) and mapping == "cellflux_rgb":
        mixed = np.einsum("kc,chw->khw", CELLFLUX_MATRIX, _display_scaled(x) * 255.0) + CELLFLUX_OFFSET
        return np.floor(np.clip(mixed, 0.0, 255.0)).astype(np.uint8)
    matrix = np.asarray(mapping, dtype=np.float32)
    if matrix.shape != (3, N_CHANNELS):
        raise ValueError(f"a composite matrix must be 3x6 (R, G, B rows over w1..w6), got {matrix.shape}")
    return np.clip(np.rint(np.einsum("kc,chw->khw", matrix, x)), 0, 255).astype(np.uint8)


def write_site(path, image: np.ndarray) -> None:
    """Write a `(6, H, W)` site (or a `(3, H, W)` composite) atomically as the canonical TIFF."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[0] not in IMAGE_CHANNELS:
        raise ValueError(f"a site image must have shape (6, H, W) or (3, H, W), got {image.shape} for {path}")
    with atomic_path(path, suffix=".tif") as tmp:
        tifffile.imwrite(tmp, image, compression="zlib", compressionargs={"level": 1},  # fast; ratio barely differs
                         photometric="minisblack", metadata={"axes": "CYX"})


def read_site(path) -> np.ndarray:
    """Read a canonical `(6, H, W)` TIFF (or a `(3, H, W)` composite)."""
    image = tifffile.imread(Path(path))
    if image.ndim != 3 or image.shape[0] not in IMAGE_CHANNELS:
        raise ValueError(f"{path}: expected a (6, H, W) site image, found shape {image.shape}")
    return image


def _display_scaled(x: np.ndarray) -> np.ndarray:
    """Each stain of a `(6, H, W)` float site scaled from its fixed display range to [0, 1], clipped."""
    lo, hi = COMPOSITE_RANGES[:, 0, None, None], COMPOSITE_RANGES[:, 1, None, None]
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0)


def composite_rgb(image: np.ndarray) -> np.ndarray:
    """`(6, H, W)` uint8-scaled site -> `(H, W, 3)` uint8 RGB composite (rxrx1-utils colour map); a `(3, H, W)`
    composite is already one (returned as `(H, W, 3)`)."""
    if np.shape(image)[0] == 3:
        return np.ascontiguousarray(np.moveaxis(np.asarray(image, dtype=np.uint8), 0, -1))
    rgb = np.einsum("chw,ck->hwk", _display_scaled(np.asarray(image, dtype=np.float32)), COMPOSITE_COLOURS)
    return (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def resize_site(image: np.ndarray, size: int) -> np.ndarray:
    """Area-average resize of a `(C, H, W)` site to `(C, size, size)`, dtype kept.

    Uses PIL's box filter per channel (anti-aliased, exact block mean for integer factors).
    """
    from PIL import Image

    image = np.asarray(image)
    if image.shape[1] == size and image.shape[2] == size:
        return image.copy()
    out = np.empty((image.shape[0], size, size), dtype=image.dtype)
    for c, plane in enumerate(image):
        resized = Image.fromarray(plane.astype(np.float32)).resize((size, size), Image.Resampling.BOX)
        values = np.asarray(resized)
        if np.issubdtype(image.dtype, np.integer):
            info = np.iinfo(image.dtype)
            values = np.clip(np.rint(values), info.min, info.max)
        out[c] = values.astype(image.dtype)
    return out


def image_problem(image: np.ndarray) -> str:
    """Why a generated `(6, H, W)` image cannot be a microscopy site, in words ("" when nothing shows): pixels that
    are not numbers, or a blank, constant or two-valued image or stain (collapsed or early generator checkpoints
    draw these; every real stain has many values). Such an image is still scored (the trust score rejects it) and
    measured (CellProfiler records a failed segmentation); this only says why."""
    image = np.asarray(image)
    if nonfinite_problem(image):
        return nonfinite_problem(image)
    low, high = image.min(), image.max()
    if low == high:
        return "blank: every pixel is 0" if high == 0 else f"constant: every pixel is {high:g}"
    few = []
    for stain, plane in enumerate(image):
        values = np.unique(plane[plane != plane.flat[0]])  # the other values than the first pixel's, if any
        if len(values) <= 1:
            name = f"w{stain + 1}" if len(image) == N_CHANNELS else f"channel {stain + 1}"  # or a composite
            few.append(f"{name} ({', '.join(f'{v:g}' for v in sorted({plane.flat[0], *values}))})")
    if few:
        return "constant or two-valued stain(s): " + ", ".join(few)
    return ""


def nonfinite_problem(image: np.ndarray) -> str:
    """"not a number: ..." when a float image holds NaN or infinite pixels ("" otherwise)."""
    image = np.asarray(image)
    if image.dtype.kind != "f" or np.isfinite(image).all():
        return ""
    return f"not a number: {np.mean(~np.isfinite(image)):.1%} of the pixels are NaN or infinite (stored as 0)"
