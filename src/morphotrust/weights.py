"""Reading weight files safely, and saying in one line what is wrong with a bad one.

Only tensors are read: safetensors files, or torch files through `torch.load(weights_only=True)`, which refuses
pickled Python objects (they can run code). A file that cannot be used is described by its likely cause:
not a tensor file (a pickle), a corrupt or truncated file, or the weights of another architecture (its key names
and shapes summarised next to the ones the model expects; missing, unexpected and misshapen keys counted).
`read_tensors(..., header_only=True)` gives the key names, shapes and dtypes as meta tensors without reading the
data (the safetensors header, the pickle of a torch zip file): what the dry run checks.
"""

from __future__ import annotations

import contextlib
import json
import re
import struct
from collections import Counter
from pathlib import Path

from .errors import InputError

PICKLE_CAUSE = ("not a tensor file: refused to unpickle (it holds pickled Python objects, which could run code); "
                "save the weights as tensors, e.g. safetensors.torch.save_file(model.state_dict(), PATH)")


# safetensors dtype names -> torch dtype names (meta tensors of a header; the key check compares shapes only)
SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                      "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def _safetensors_header(path: Path) -> tuple[str | None, dict]:
    """(why a .safetensors file cannot be read or None when its header and size agree, its header)."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return f"corrupt safetensors file: {size} bytes, shorter than the 8-byte header length", {}
        (header_len,) = struct.unpack("<Q", head)
        if header_len > size - 8:
            return (f"corrupt or truncated safetensors file: the header says {header_len} header bytes, the file "
                    f"has {size} bytes"), {}
        try:
            header = json.loads(handle.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return "corrupt safetensors file: its header is not JSON", {}
    header.pop("__metadata__", None)
    needed = 8 + header_len + max((v["data_offsets"][1] for v in header.values()), default=0)
    if needed > size:
        return f"truncated safetensors file: its tensors need {needed} bytes, the file has {size}", header
    return None, header


def read_tensors(path, where: str, header_only: bool = False) -> dict:
    """{name: tensor} of a weights file; an InputError naming `where`, the file and the cause otherwise.
    `header_only`: meta tensors (names, shapes, dtypes; no data read)."""
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
        problem, header = _safetensors_header(path)
        if problem:
            raise InputError(problem, file=path, where=where)
        if header_only:
            return {k: torch.empty(v["shape"], dtype=getattr(torch, SAFETENSORS_DTYPES.get(v["dtype"], "float32")),
                                   device="meta") for k, v in header.items()}
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except Exception as error:  # noqa: BLE001 - any decoder failure: the file is damaged
            raise InputError(f"corrupt safetensors file ({str(error).splitlines()[0]})", file=path,
                             where=where) from None
    try:
        with open(path, "rb") as handle:  # a handle: torch would read a *.safetensors name as safetensors
            state = torch.load(handle, map_location="meta" if header_only else "cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001
        text = str(error)
        if "Weights only load failed" in text or "Unpickl" in type(error).__name__:
            raise InputError(PICKLE_CAUSE, file=path, where=where) from None
        if magic == b"PK" and "central directory" in text:
            raise InputError("truncated or damaged torch file: its zip directory (at the end of the file) is "
                             "missing", file=path, where=where) from None
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


def listing(keys, limit: int = 5) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def key_problem(found: dict, expected: dict) -> str | None:
    """Missing, unexpected and misshapen keys of `found` against `expected`, counted with examples (None when
    they agree)."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [f"{k} {tuple(found[k].shape)} (expected {tuple(expected[k].shape)})" for k in expected
              if k in found and hasattr(found[k], "shape") and tuple(found[k].shape) != tuple(expected[k].shape)]
    parts = [f"missing keys ({len(missing)}): {listing(missing)}" if missing else "",
             f"unexpected keys ({len(unexpected)}): {listing(unexpected)}" if unexpected else "",
             f"wrong shapes ({len(shapes)}): {'; '.join(shapes[:4])}" if shapes else ""]
    return "; ".join(p for p in parts if p) or None


def architecture_problem(found: dict, expected: dict) -> str | None:
    """One line describing how a state dict differs from the model's (None when keys and shapes agree)."""
    tensors = {k: v for k, v in found.items() if hasattr(v, "shape")}
    if len(tensors) < len(found):
        nested = [k for k, v in found.items() if isinstance(v, dict)]
        if nested and not tensors:
            return (f"not a state dict: a checkpoint holding {', '.join(nested[:4])} (expected the tensors "
                    f"themselves, e.g. the `{nested[0]}` entry saved on its own)")
    differences = key_problem(tensors, expected)
    if differences is None:
        return None
    return (f"weights of another architecture: {guess_architecture(tensors)} keys, {_summary(tensors)}; the model "
            f"({guess_architecture(expected)}) expects {_summary(expected)}; {differences}")


@contextlib.contextmanager
def checked_loading(problems: list):
    """While a library (timm) builds a model and loads weights into it: compare the state dict it loads (after
    its own conversions: checkpoint filters, a dropped classifier) with the model's keys and shapes, append the
    difference (`architecture_problem`, None when they agree) to `problems`, and load only when they agree. timm
    loads non-strictly once the classifier is dropped and only logs missing or unexpected keys: a file of another
    model would silently leave random weights, or extra ones unused."""
    import torch

    original = torch.nn.Module.load_state_dict

    def load(module, state_dict, *args, **kwargs):
        problems.append(architecture_problem(state_dict, module.state_dict()))
        if problems[-1]:
            return torch.nn.modules.module._IncompatibleKeys([], [])
        return original(module, state_dict, *args, **kwargs)

    torch.nn.Module.load_state_dict = load
    try:
        yield
    finally:
        torch.nn.Module.load_state_dict = original
