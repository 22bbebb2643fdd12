"""The planted bugs stay in step with the code: each text to replace occurs once in its file, and
each test named to catch it exists (running them is ``python tests/planted_bugs.py``, not CI)."""
from __future__ import annotations

import re

import pytest
from planted_bugs import PLANTS, ROOT, Plant, planted


@pytest.mark.parametrize("plant", PLANTS, ids=lambda p: p.name)
def test_each_plant_still_applies_to_the_code(plant: Plant) -> None:
    text = (ROOT / plant.path).read_text()
    assert planted(plant, text) != text


def test_each_plant_has_a_unique_name_and_names_tests_that_exist() -> None:
    names = [p.name for p in PLANTS]
    assert len(set(names)) == len(names)
    for plant in PLANTS:
        assert plant.tests, plant.name
        for test in plant.tests:
            path, _, name = test.partition("::")
            source = (ROOT / path).read_text()
            if name:
                function = name.split("::")[-1].split("[")[0]
                assert re.search(rf"^\s*def {re.escape(function)}\(", source, re.M), f"{plant.name}: no {test}"


def test_a_text_that_moved_or_repeats_is_refused_not_planted_twice() -> None:
    plant = Plant("example", "x.py", "a = 1", "a = 2", ("tests/x.py",))
    assert planted(plant, "a = 1\n") == "a = 2\n"
    for text in ("b = 1\n", "a = 1\na = 1\n"):
        with pytest.raises(ValueError, match="occurs"):
            planted(plant, text)
