"""Shared label spaces: packaged mappings are valid, LUTs map each side's train ids to the shared ids."""

import numpy as np
import pytest

from encseg.data.formats.ade20k import ADE20K_CLASSES
from encseg.data.formats.cityscapes import CITYSCAPES_CLASSES
from encseg.data.formats.voc import VOC_CLASSES
from encseg.data.synthetic import class_names
from encseg.data.taxonomy import TaxonomyError, load_taxonomy, shared_space, taxonomy_names


def test_packaged_taxonomies_load_and_validate():
    assert {"common", "synthetic"} <= set(taxonomy_names())
    assert "person" in load_taxonomy("common")["classes"]
    with pytest.raises(TaxonomyError, match="nope"):
        load_taxonomy("nope")


def test_cityscapes_to_ade_merges_rider_into_person():
    lut_cs, lut_ade, names = shared_space("cityscapes", "ade20k")
    assert {"person", "car", "road", "building", "sky", "vegetation", "motorcycle"} <= set(names)
    assert "rider" not in names and "terrain" not in names
    person = names.index("person")
    assert lut_cs[CITYSCAPES_CLASSES.index("person")] == lut_cs[CITYSCAPES_CLASSES.index("rider")] == person
    assert lut_ade[ADE20K_CLASSES.index("person")] == person
    veg = names.index("vegetation")
    assert {lut_ade[ADE20K_CLASSES.index(c)] for c in ("tree", "plant", "palm")} == {veg}
    assert lut_cs[CITYSCAPES_CLASSES.index("terrain")] == 255 and lut_cs[255] == 255
    assert lut_ade[ADE20K_CLASSES.index("bed")] == 255
    # applied to a mask of train ids
    mask = np.array([CITYSCAPES_CLASSES.index("rider"), CITYSCAPES_CLASSES.index("terrain"), 255])
    np.testing.assert_array_equal(lut_cs[mask], [person, 255, 255])


def test_cityscapes_voc_and_identical_spaces():
    _, lut_voc, names = shared_space("cityscapes", "voc")
    assert sorted(names) == sorted(["person", "car", "bus", "train", "bicycle", "motorcycle"])
    assert lut_voc[VOC_CLASSES.index("motorbike")] == names.index("motorcycle")
    assert lut_voc[0] == 255  # background is not shared
    a, b, names = shared_space("gta5", "cityscapes")
    assert names == list(CITYSCAPES_CLASSES) and (a[:19] == np.arange(19)).all() and (b == a).all()


def test_synthetic_spaces_match_by_name():
    a, b, names = shared_space("synthetic", "synthetic", class_names(5), class_names(5))
    assert names == class_names(5) and (a[:5] == np.arange(5)).all()
    a, b, names = shared_space("synthetic", "synthetic", class_names(7), class_names(4))
    assert names == class_names(4) and a[6] == 255 and b[3] == 3
    with pytest.raises(TaxonomyError, match="share no label space"):
        shared_space("synthetic", "cityscapes", class_names(5))
    with pytest.raises(TaxonomyError, match="class list"):
        shared_space("synthetic", "synthetic")
