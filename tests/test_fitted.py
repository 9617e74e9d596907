"""The one save/load helper of fitted objects (morphotrust.fitted): file names, round trip, clear errors."""

import json

import numpy as np
import pytest

from morphotrust import fitted
from morphotrust.errors import InputError
from morphotrust.morphology.cleaning import FeatureCleaner
from morphotrust.reduction import FeatureReduction


def test_paths_accept_a_prefix_or_either_file(tmp_path):
    expected = (tmp_path / "scorer.npz", tmp_path / "scorer.json")
    assert fitted.paths(tmp_path / "scorer") == expected
    assert fitted.paths(tmp_path / "scorer.npz") == fitted.paths(str(tmp_path / "scorer.json")) == expected


def test_round_trip_is_bit_exact_and_keeps_the_array_order(tmp_path):
    arrays = {"b": np.arange(5, dtype=np.int64), "a": np.random.default_rng(0).normal(size=(3, 4)),
              "names": np.array(["x", "yy"], dtype=str)}
    npz, js = fitted.save(arrays, {"format": "test/1", "n": 3}, *fitted.paths(tmp_path / "thing"))
    meta, loaded = fitted.load(npz, js, "test/1", "fitted thing", "the test")
    assert meta == {"format": "test/1", "n": 3}
    assert list(loaded) == ["b", "a", "names"]
    for key, value in arrays.items():
        assert loaded[key].dtype == value.dtype and np.array_equal(loaded[key], value)


def test_missing_file_and_wrong_format_name_the_file(tmp_path):
    npz, js = fitted.save({"a": np.zeros(2)}, {"format": "test/1"}, *fitted.paths(tmp_path / "thing"))
    with pytest.raises(InputError, match=r"thing.json: format 'test/1' \(expected test/2\)"):
        fitted.load(npz, js, "test/2", "fitted thing", "the test")
    npz.unlink()
    with pytest.raises(InputError, match=r"thing.npz.*fitted thing file is missing"):
        fitted.load(npz, js, "test/1", "fitted thing", "the test")


def test_the_fitted_objects_save_through_it(tmp_path):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(40, 10)) + 2
    FeatureReduction("pca", 3, True, False, True).fit(X, [(0, 4), (4, 10)]).save(tmp_path / "red")
    assert json.loads((tmp_path / "red.json").read_text())["format"] == "morphotrust.FeatureReduction/1"
    with pytest.raises(InputError, match="fitted feature reduction file is missing"):
        FeatureReduction.load(tmp_path / "other")
    (tmp_path / "cleaner.json").write_text(json.dumps({"format": "morphotrust.feature_cleaner/1"}))
    np.savez(tmp_path / "cleaner.npz", mean=np.zeros(1))
    with pytest.raises(InputError, match="format 'morphotrust.feature_cleaner/1'"):
        FeatureCleaner.load(tmp_path / "cleaner.npz", tmp_path / "cleaner.json")
