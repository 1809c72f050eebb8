"""docs/config_reference.md is generated from the native schema and kept up to date."""

from pathlib import Path

from mlpot.config.reference import config_reference

PAGE = Path(__file__).resolve().parents[1] / "docs" / "config_reference.md"


def test_committed_reference_equals_the_schema():
    assert PAGE.read_text() == config_reference(), \
        "regenerate: python -m mlpot.config.reference > docs/config_reference.md"


def test_every_section_of_the_schema_has_a_table():
    text = config_reference()
    for section in ("NativeConfig", "DataConfig", "DataSection", "TrainingConfig", "LossTerm", "FullValidationConfig"):
        assert section in text
    assert "| `min_distance` |" in text and "| `valid_fraction` |" in text
