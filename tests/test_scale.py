"""Physical scale of morphology (morphotrust.morphology.scale): pixel sizes and diameters from config."""

from pathlib import Path

import pytest
import yaml

from morphotrust.data.demo import DEMO_FIELD_UM, demo_pixel_size_um
from morphotrust.errors import InputError
from morphotrust.morphology import scale

REPO = Path(__file__).resolve().parents[1]


def _config(**morphology):
    return {"data": {"rxrx1_path": None, "demo": {"image_size": 128}}, "morphology": morphology}


def test_schema_defaults_match_the_code():
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    props = schema["properties"]["morphology"]["properties"]
    assert props["resolution"]["default"] == scale.NATIVE
    assert scale.nuclei_diameter_um(_config()) == tuple(props["nuclei_diameter_um"]["default"])  # read from the schema
    assert props["pixel_size_um"]["default"] is None
    assert props["real_detail"]["default"] == "generator"


def test_demo_and_rxrx1_pixel_sizes():
    demo = _config()
    assert scale.pixel_size_um(demo) == pytest.approx(DEMO_FIELD_UM / 128)
    assert scale.morphology_resolution(demo) == 128
    demo["data"]["demo"]["image_size"] = 256  # same field, finer pixels
    assert scale.pixel_size_um(demo) == pytest.approx(demo_pixel_size_um(256)) == pytest.approx(DEMO_FIELD_UM / 256)
    rxrx1 = {"data": {"rxrx1_path": "/data/rxrx1"}, "morphology": {}}
    assert scale.pixel_size_um(rxrx1) == scale.RXRX1_PIXEL_SIZE_UM
    assert scale.native_size_px(rxrx1) == 512
    assert scale.pixel_size_um({"data": {"rxrx1_path": "x"}, "morphology": {"pixel_size_um": 0.3}}) == 0.3


def test_scale_at_a_resolution_and_diameters():
    config = {"data": {"rxrx1_path": "x"}, "morphology": {"resolution": 128, "nuclei_diameter_um": [6, 30]}}
    s = scale.scale_of(config)
    assert s["resolution_px"] == 128 and s["native_px"] == 512
    assert s["pixel_size_um"] == pytest.approx(0.65 * 4)
    low, high = s["nuclei_diameter_px"]
    assert low == 2 and high == 12  # 6/2.6 = 2.3 -> 2; 30/2.6 = 11.5 -> 12 (never narrower than asked)
    assert scale.nuclei_diameter_px([10, 20], 1.0) == (10, 20)
    assert scale.nuclei_diameter_px([1, 1.2], 1.0) == (2, 3)  # at least 2 px, max above min


def test_real_sites_take_the_generators_resolution_by_default():
    demo = {**_config(), "subsets": {"resolution": 64}}
    assert scale.scale_of(demo)["real_via_px"] == 64
    assert scale.scale_of({**_config(real_detail="native"), "subsets": {"resolution": 64}})["real_via_px"] is None
    # nothing to lose when the generator is as fine as the morphology, or morphology is coarser than it
    assert scale.scale_of({**_config(), "subsets": {"resolution": 128}})["real_via_px"] is None
    assert scale.scale_of({**_config(resolution=48), "subsets": {"resolution": 64}})["real_via_px"] is None
    with pytest.raises(InputError, match="morphology.real_detail"):
        scale.scale_of({**_config(real_detail="full"), "subsets": {"resolution": 64}})


@pytest.mark.parametrize("morphology, key", [
    ({"resolution": "full"}, "morphology.resolution"),
    ({"resolution": 8}, "morphology.resolution"),
    ({"pixel_size_um": 0}, "morphology.pixel_size_um"),
    ({"nuclei_diameter_um": [20, 10]}, "morphology.nuclei_diameter_um"),
])
def test_bad_values_name_the_key(morphology, key):
    with pytest.raises(InputError, match=key):
        scale.scale_of(_config(**morphology))
