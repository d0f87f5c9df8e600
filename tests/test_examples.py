"""The example inputs under tests/examples are exact copies of the shared originals."""

from pathlib import Path

import pytest

from tests.conftest import EXAMPLES

SHARED = Path(__file__).resolve().parents[2] / "shared" / "examples"


@pytest.mark.skipif(
    not SHARED.is_dir(),
    reason="../shared/examples not found beside the repository; tests use the copies",
)
def test_examples_match_shared_originals() -> None:
    originals = sorted(p.relative_to(SHARED) for p in SHARED.rglob("*") if p.is_file())
    copies = sorted(p.relative_to(EXAMPLES) for p in EXAMPLES.rglob("*") if p.is_file())
    assert copies == originals
    for name in originals:
        assert (EXAMPLES / name).read_bytes() == (SHARED / name).read_bytes(), name


def test_product_examples_match_test_examples() -> None:
    root = Path(__file__).resolve().parents[1] / "examples"
    for name in ("campaign.json", "lead.json"):
        assert (root / name).read_bytes() == (EXAMPLES / name).read_bytes(), name
