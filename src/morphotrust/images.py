"""Six-channel site images: the canonical on-disk form and the RGB composite people look at.

Canonical form: one TIFF per site holding a `(6, H, W)` array, channel order w1..w6 (RxRx1 stains:
w1 Hoechst/nuclei, w2 ConA/ER, w3 phalloidin/actin, w4 SYTO14/nucleoli+RNA, w5 MitoTracker/mitochondria,
w6 WGA/Golgi+membrane), dtype kept (uint8 for RxRx1 PNGs), zlib-compressed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from .io import atomic_path

N_CHANNELS = 6
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


def write_site(path, image: np.ndarray) -> None:
    """Write a `(6, H, W)` site atomically as the canonical TIFF."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[0] != N_CHANNELS:
        raise ValueError(f"a site image must have shape (6, H, W), got {image.shape} for {path}")
    with atomic_path(path, suffix=".tif") as tmp:
        tifffile.imwrite(tmp, image, compression="zlib", compressionargs={"level": 1},  # fast; ratio barely differs
                         photometric="minisblack", metadata={"axes": "CYX"})


def read_site(path) -> np.ndarray:
    """Read a canonical `(6, H, W)` TIFF."""
    image = tifffile.imread(Path(path))
    if image.ndim != 3 or image.shape[0] != N_CHANNELS:
        raise ValueError(f"{path}: expected a (6, H, W) site image, found shape {image.shape}")
    return image


def composite_rgb(image: np.ndarray) -> np.ndarray:
    """`(6, H, W)` uint8-scaled site -> `(H, W, 3)` uint8 RGB composite (rxrx1-utils colour map)."""
    x = np.asarray(image, dtype=np.float32)
    lo, hi = COMPOSITE_RANGES[:, 0, None, None], COMPOSITE_RANGES[:, 1, None, None]
    scaled = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    rgb = np.einsum("chw,ck->hwk", scaled, COMPOSITE_COLOURS)
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
