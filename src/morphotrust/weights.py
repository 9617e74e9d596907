"""Reading weight files safely, and saying in one line what is wrong with a bad one.

Only tensors are read: safetensors files, or torch files through `torch.load(weights_only=True)`, which refuses
pickled Python objects (they can run code). A file that cannot be used is described by its likely cause:
not a tensor file (a pickle), a corrupt or truncated safetensors file, or the weights of another architecture
(its key names and shapes summarised next to the ones the model expects).
"""

from __future__ import annotations

import json
import re
import struct
from collections import Counter
from pathlib import Path

from .errors import InputError

PICKLE_CAUSE = ("not a tensor file: refused to unpickle (it holds pickled Python objects, which could run code); "
                "save the weights as tensors, e.g. safetensors.torch.save_file(model.state_dict(), PATH)")


def _safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file cannot be read (None when its header and size agree)."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return f"corrupt safetensors file: {size} bytes, shorter than the 8-byte header length"
        (header_len,) = struct.unpack("<Q", head)
        if header_len > size - 8:
            return (f"corrupt or truncated safetensors file: the header says {header_len} header bytes, the file "
                    f"has {size} bytes")
        try:
            header = json.loads(handle.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return "corrupt safetensors file: its header is not JSON"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    needed = 8 + header_len + max(ends, default=0)
    if needed > size:
        return f"truncated safetensors file: its tensors need {needed} bytes, the file has {size}"
    return None


def read_tensors(path, where: str) -> dict:
    """{name: tensor} of a weights file; an InputError naming `where`, the file and the cause otherwise."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError("weights file not found", file=path, where=where)
    with open(path, "rb") as handle:
        magic = handle.read(2)
    if magic[:1] == b"\x80":  # the pickle protocol opcode: a pickled object, whatever the file is called
        raise InputError(PICKLE_CAUSE, file=path, where=where)
    # A zip-format torch file is read as one whatever its suffix (OpenPhenom's "model.safetensors" is one).
    if path.suffix == ".safetensors" and magic != b"PK":
        problem = _safetensors_problem(path)
        if problem:
            raise InputError(problem, file=path, where=where)
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except Exception as error:  # noqa: BLE001 - any decoder failure: the file is damaged
            raise InputError(f"corrupt safetensors file ({str(error).splitlines()[0]})", file=path,
                             where=where) from None
    try:
        with open(path, "rb") as handle:  # a handle: torch would read a *.safetensors name as safetensors
            state = torch.load(handle, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001
        text = str(error)
        if "Weights only load failed" in text or "Unpickl" in type(error).__name__:
            raise InputError(PICKLE_CAUSE, file=path, where=where) from None
        raise InputError(f"not a weights file: neither safetensors nor a torch tensor file "
                         f"({text.splitlines()[0][:120]})", file=path, where=where) from None
    return state


def guess_architecture(keys) -> str:
    """A rough name for the model a state dict's keys come from ("resnet18-like", "ViT-like", ...)."""
    keys = list(keys)
    joined = "\n".join(keys)
    if re.search(r"^layer\d+\.\d+\.conv1\.weight$", joined, flags=re.M):
        blocks = tuple(len({k.split(".")[1] for k in keys if k.startswith(f"layer{i}.")}) for i in range(1, 5))
        bottleneck = any(".conv3." in k for k in keys)
        names = {(2, 2, 2, 2): "resnet18", (3, 4, 6, 3): "resnet50" if bottleneck else "resnet34",
                 (3, 4, 23, 3): "resnet101", (3, 8, 36, 3): "resnet152"}
        return f"{names.get(blocks, 'resnet')}-like"
    if re.search(r"blocks\.\d+\.attn\.qkv", joined):
        return "ViT-like"
    if "conv_stem.weight" in keys:
        return "EfficientNet/MobileNet-like"
    if re.search(r"stages\.\d+\.blocks\.\d+\.", joined):
        return "ConvNeXt-like"
    return "unrecognised"


def _summary(state: dict, limit: int = 4) -> str:
    names = sorted(state, key=lambda k: len(getattr(state[k], "shape", ())) == 0)  # counters last
    tops = Counter(k.split(".")[0] for k in names)
    shown = ", ".join(f"{k} {tuple(getattr(state[k], 'shape', ()))}" for k in names[:limit])
    return f"{len(names)} tensors ({shown}, ...; top-level names {', '.join(list(tops)[:6])})"


def architecture_problem(found: dict, expected: dict) -> str | None:
    """One line describing how a state dict differs from the model's (None when keys and shapes agree)."""
    tensors = {k: v for k, v in found.items() if hasattr(v, "shape")}
    if len(tensors) < len(found):
        nested = [k for k, v in found.items() if isinstance(v, dict)]
        if nested and not tensors:
            return (f"not a state dict: a checkpoint holding {', '.join(nested[:4])} (expected the tensors "
                    f"themselves, e.g. the `{nested[0]}` entry saved on its own)")
    missing = [k for k in expected if k not in tensors]
    wrong_shape = [k for k in expected if k in tensors and tuple(tensors[k].shape) != tuple(expected[k].shape)]
    if not missing and not wrong_shape:
        return None
    shared = len(expected) - len(missing)
    return (f"weights of another architecture: {guess_architecture(tensors)} keys, {_summary(tensors)}; the model "
            f"({guess_architecture(expected)}) expects {_summary(expected)}; {shared} of its {len(expected)} keys "
            f"are present, {len(wrong_shape)} with another shape")
