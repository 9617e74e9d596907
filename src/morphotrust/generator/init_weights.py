"""Starting training from earlier weights: config generator.init_weights (the flow model) and
generator.trained_autoencoder.init_weights (the autoencoder).

An init-weights file is a safetensors file of one network's tensors (for the flow model its EMA weights) whose
metadata header says what they are: the format, the kind of network, its config, the flow model's attribute
vocabularies, where the training data came from, and a signature of that data. Training from such a file checks
each of these against the run's own and says in one line what differs. The data check is exact for the training
sites (ids and conditions) and tolerant for their pixels: a CPU may render the synthetic demo with last-bit
float differences, which move a site's mean grey level by far less than MEAN_TOLERANCE; other pixels move it more.

`export_weights` writes such a file from a finished training run; scripts/train_demo_weights.py makes the demo's
(resources/demo_weights/, with a provenance file).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from ..io import atomic_path

FORMAT = "morphotrust-init-weights-1"
KINDS = ("autoencoder", "flow")
MEAN_TOLERANCE = 0.5  # grey levels (of 255) by which a training site's per-stain mean may differ
WHERE = {"flow": "config generator.init_weights", "autoencoder": "config generator.trained_autoencoder.init_weights"}
REGENERATE = ".venv/bin/python scripts/train_demo_weights.py"  # remakes resources/demo_weights/


def data_signature(images: np.ndarray, rows: pd.DataFrame) -> dict:
    """What a network was trained on: the training sites (ids and conditions, hashed), the image size, where the
    data came from (the synthetic demo or not), and every site's mean grey level per stain (2 decimals)."""
    names = "\n".join(rows["Metadata_site_id"].astype(str) + "|" + rows["Metadata_condition"].astype(str))
    means = np.asarray(images, dtype=np.float64).reshape(len(images), images.shape[1], -1).mean(axis=2)
    synthetic = bool(rows["Metadata_synthetic"].all()) if "Metadata_synthetic" in rows.columns else False
    return dict(n_sites=int(len(rows)), resolution=int(images.shape[-1]), synthetic_demo=synthetic,
                sites_sha256=hashlib.sha256(names.encode()).hexdigest(), stain_means=np.round(means, 2).tolist())


def signature_difference(trained_on: dict, this_run: dict) -> str | None:
    """How this run's training data differs from the data the weights were trained on (None: the same data)."""
    if trained_on["synthetic_demo"] != this_run["synthetic_demo"]:
        names = {True: "the synthetic demo", False: "a real data set"}
        return (f"they were trained on {names[trained_on['synthetic_demo']]}, this run trains on "
                f"{names[this_run['synthetic_demo']]}")
    if trained_on["resolution"] != this_run["resolution"]:
        return f"they were trained at {trained_on['resolution']} px, this run trains at {this_run['resolution']} px"
    if trained_on["n_sites"] != this_run["n_sites"] or trained_on["sites_sha256"] != this_run["sites_sha256"]:
        return (f"they were trained on other sites ({trained_on['n_sites']} training sites; this run has "
                f"{this_run['n_sites']}, and their site ids or conditions differ)")
    difference = float(np.abs(np.asarray(trained_on["stain_means"]) - np.asarray(this_run["stain_means"])).max())
    if difference > MEAN_TOLERANCE:
        return (f"they were trained on the same sites with other pixels (a site's mean grey level in one stain differs "
                f"by {difference:.2f}; at most {MEAN_TOLERANCE} is last-bit rendering noise)")
    return None


def export_weights(path, kind: str, tensors: dict, network: dict, signature: dict,
                   vocabularies: dict | None = None, steps: int | None = None) -> None:
    """Write `tensors` (a state dict) as an init-weights file: float32 safetensors plus the metadata header."""
    from safetensors.torch import save_file

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    metadata = dict(format=FORMAT, kind=kind, network=json.dumps(network, sort_keys=True),
                    vocabularies=json.dumps(vocabularies, sort_keys=True), steps=json.dumps(steps),
                    training_data=json.dumps(signature))
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file({k: v.detach().cpu().float().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def read_header(path, kind: str) -> dict:
    """The metadata header of an init-weights file (values decoded), checked to be one of `kind`; InputError
    naming the file and the config key otherwise. Reads only the header (the dry run's check)."""
    from safetensors import safe_open

    from ..weights import read_tensors

    where, path = WHERE[kind], Path(path)
    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
    except Exception:  # noqa: BLE001 - not safetensors, truncated, missing: read_tensors says which
        read_tensors(path, where)
        raise InputError("not a safetensors file", file=path, where=where,
                         expected="an init-weights file written by `morphotrust generator export-weights`") from None
    if metadata.get("format") != FORMAT:
        raise InputError("a safetensors file without morphotrust's init-weights header (format, network, training "
                         "data)", file=path, where=where,
                         expected=f"a file written by `morphotrust generator export-weights` ({REGENERATE})")
    if metadata["kind"] != kind:
        raise InputError(f"the weights of the {metadata['kind']}, not of the {kind}", file=path, where=where,
                         expected=f"the {kind}'s init weights")
    return dict(metadata, **{k: json.loads(metadata[k]) for k in ("network", "vocabularies", "steps", "training_data")})


def load_init_weights(path, kind: str, network: dict, signature: dict, vocabularies: dict | None = None) -> dict:
    """The tensors of an init-weights file, after checking that they are this network, these vocabularies and
    this run's training data; InputError saying what differs otherwise."""
    from ..weights import read_tensors

    where, path = WHERE[kind], Path(path)
    header = read_header(path, kind)
    if kind == "flow" and header["vocabularies"] != vocabularies:
        raise InputError(f"the weights know other conditions (cell types {header['vocabularies']['cell_type']}, "
                         f"siRNAs {header['vocabularies']['sirna_id']}; this run trains on cell types "
                         f"{vocabularies['cell_type']}, siRNAs {vocabularies['sirna_id']})", file=path, where=where,
                         expected="weights trained on this run's seen conditions, or null to train from scratch")
    if header["network"] != json.loads(json.dumps(network, sort_keys=True)):
        differing = sorted(k for k in set(header["network"]) | set(network)
                           if header["network"].get(k) != network.get(k))
        shown = "; ".join(f"{k}: {header['network'].get(k)!r} in the file, {network.get(k)!r} here" for k in differing)
        raise InputError(f"the weights are of another network ({shown})", file=path, where=where,
                         expected="weights of the network the config builds, or null to train from scratch")
    difference = signature_difference(header["training_data"], signature)
    if difference:
        raise InputError(f"the weights were not trained on this run's training data: {difference}", file=path,
                         where=where, expected=f"null to train from scratch on your data (the demo's weights are "
                                               f"remade by `{REGENERATE}`)")
    return read_tensors(path, where)



def export_from_run(kind: str, source, manifest_path, stacks_dir, resolution: int, out) -> dict:
    """Export a finished run's network as an init-weights file: the autoencoder stage's folder (or its
    autoencoder.json) for kind autoencoder, the train rule's checkpoint.pt (its EMA weights) for kind flow.
    Returns the header written."""
    from .data import read_images, read_manifest, training_rows

    rows = training_rows(read_manifest(manifest_path), manifest_path)
    signature = data_signature(read_images(stacks_dir, rows, resolution), rows)
    if kind == "autoencoder":
        from safetensors.torch import load_file

        from ..io import read_json

        meta_path = Path(source) / "autoencoder.json" if Path(source).is_dir() else Path(source)
        meta = read_json(meta_path)
        if meta.get("kind") != "trained":
            raise InputError(f"a {meta.get('kind')} autoencoder has no trained weights to export", file=meta_path,
                             expected="the autoencoder.json of generator.autoencoder: trained")
        tensors, network, vocabularies, steps = (load_file(str(meta_path.with_suffix(".safetensors"))),
                                                 meta["network"], None, meta["steps"])
    elif kind == "flow":
        from .runtime import load_checkpoint

        state = load_checkpoint(source)
        tensors, network, vocabularies = state["ema"], state["model_config"], state["vocabularies"]
        steps = state["step"]
    else:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    export_weights(out, kind, tensors, network, signature, vocabularies, steps)
    return read_header(out, kind)
