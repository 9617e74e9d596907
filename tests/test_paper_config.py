"""config/paper_rxrx1.yaml: the paper's RxRx1 setting. Every value cites its source; it dry-runs on RxRx1-shaped
metadata; its coverage diagnostic finds what the paper's split implies (controls seen in U2OS only)."""

import re
import shutil

import pandas as pd
import pytest
import yaml

from morphotrust.subsets.conditions import load_conditions
from morphotrust.data.demo import rxrx1_shaped_metadata
from morphotrust.subsets import build_manifest, coverage

from workflow_helpers import REPO, run_snakemake

PAPER = REPO / "config" / "paper_rxrx1.yaml"
CONDITIONS = REPO / "config" / "conditions_paper_rxrx1.yaml"
HELD_OUT_HUVEC_TREATMENTS = {349, 350, 351, 352, 363, 364, 401}  # repo configs/dataset/rxrx1_marginal.yaml


@pytest.fixture(scope="module")
def metadata():
    return rxrx1_shaped_metadata()


def test_every_paper_value_says_where_it_comes_from():
    """Each value of the sections the issue lists has a comment on its line or in the comment block above it."""
    lines = PAPER.read_text().splitlines()
    sections = ("subsets", "generator", "features", "trust")
    section, uncited = None, []
    for i, line in enumerate(lines):
        top = re.match(r"^(\w+):", line)
        if top:
            section = top.group(1)
            continue
        leaf = re.match(r"^  (\w+): (\S.*)$", line)
        if section in sections and leaf:
            above = lines[i - 1].strip()
            if "#" not in line and not above.startswith("#"):
                uncited.append(f"{section}.{leaf.group(1)}")
    assert uncited == []
    text = PAPER.read_text()
    for fact in ("SiT-B/2", "max_steps 400001", "num_inference_steps 250", "cfg_scale 1.0", "dinov3-vit-l",
                 "\"100 for RxRx1\"", "OUR CHOICE", "CLOSEST SUPPORTED"):
        assert fact in text, fact


def test_the_subset_is_25_seen_and_25_unseen_with_the_fixed_huvec_treatments():
    data = yaml.safe_load(CONDITIONS.read_text())
    unseen = {(c["cell_type"], c["sirna_id"]) for c in data["unseen"]}
    assert len(unseen) == 25
    assert {s for c, s in unseen if c == "HUVEC" and s < 1108} == HELD_OUT_HUVEC_TREATMENTS
    by_group = pd.Series([(c, s >= 1108) for c, s in unseen]).value_counts().to_dict()
    assert by_group == {("HEPG2", True): 8, ("HUVEC", False): 7, ("HUVEC", True): 2, ("RPE", True): 8}
    seen = [(c["cell_type"], c["sirna_id"]) for c in data["seen"]]
    evaluation_seen = seen[:25]
    assert sum(c == "HUVEC" and s < 1108 for c, s in evaluation_seen) == 20
    assert sum(c == "U2OS" and 1108 <= s <= 1138 for c, s in evaluation_seen) == 5
    # the paper's generator never saw a control outside U2OS: no control of another cell type may be seen
    assert not [p for p in seen if p[1] >= 1108 and p[0] != "U2OS"]
    assert not unseen & set(seen)


def test_coverage_flags_the_controls_seen_with_one_cell_type(metadata):
    conditions = load_conditions(CONDITIONS, metadata, 8)
    sites = metadata.rename(columns=lambda c: f"Metadata_{c}").assign(Metadata_image_path="none.tif")
    cfg = yaml.safe_load(PAPER.read_text())["subsets"]
    table = coverage.coverage_table(conditions, build_manifest(sites, conditions, cfg), cfg["coverage"])
    per = coverage.per_condition(table).set_index("condition")["coverage_low"]
    low = set(per[per].index)
    assert len(low) == 18  # the 18 unseen controls: every control was seen in U2OS only
    assert all(int(c.split(":")[1]) >= 1108 for c in low)
    sirna = table[table["attribute"] == "sirna_id"].set_index("condition")
    assert sirna.loc["HUVEC:349", "contexts"] == "HEPG2|RPE|U2OS" and sirna.loc["HEPG2:1108", "contexts"] == "U2OS"


def weights_folder_like_dinov3(folder, encoder):
    """A timm model folder as `hf download` leaves it, whose model.safetensors has the encoder's real header (key
    names and shapes) over a sparse, all-zero body: what the dry run's weights check reads, without 1.2 GB."""
    import json
    import struct

    import timm
    import torch

    with torch.device("meta"):
        state = timm.create_model(encoder, pretrained=False).state_dict()
    header, offset = {}, 0
    for name, tensor in state.items():
        size = tensor.numel() * 4
        header[name] = {"dtype": "F32", "shape": list(tensor.shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architecture": encoder.split(".")[0]}))
    with open(folder / "model.safetensors", "wb") as file:
        file.write(struct.pack("<Q", len(text)) + text)
        file.truncate(8 + len(text) + offset)


def test_paper_config_dry_runs_on_rxrx1_shaped_metadata(tmp_path, metadata):
    (tmp_path / "rxrx1").mkdir()
    metadata.to_csv(tmp_path / "rxrx1" / "metadata.csv", index=False)
    shutil.copytree(REPO / "config", tmp_path / "config")
    config = yaml.safe_load(PAPER.read_text())
    config["data"]["rxrx1_path"] = str(tmp_path / "rxrx1")
    # as a user must: point features.weights at the local DINOv3 copy (the config check reads its header)
    weights_folder_like_dinov3(tmp_path / "dinov3-large", config["features"]["encoder"])
    config["features"]["weights"] = f"local-dir:{tmp_path / 'dinov3-large'}"
    (tmp_path / "sd-vae-ft-mse").mkdir()  # and generator.sd_vae.weights at the local SD-VAE
    config["generator"]["sd_vae"]["weights"] = str(tmp_path / "sd-vae-ft-mse")
    (tmp_path / "config" / "paper_rxrx1.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    result = run_snakemake(tmp_path, "--configfile", str(tmp_path / "config" / "paper_rxrx1.yaml"), "-n",
                           "--quiet", "rules", "--cores", "32", timeout=900)
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", result.stdout, flags=re.M))
    for rule in ("autoencoder", "train", "sample", "trust_score", "ceiling", "report_summary", "baselines",
                 "validation_scorers", "validation_corruptions"):
        assert jobs.get(rule) == "1", (rule, result.stdout[-3000:])
    assert jobs.get("features_real") == "3"  # one per split
    assert jobs.get("features_generated") == "2"  # the generations and the SD-VAE's held-out reconstructions
    # the plates holding the listed conditions each get a QC report: many, on RxRx1's 51 x 4 plates
    assert int(jobs["report_plate"]) > 50
