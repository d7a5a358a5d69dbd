"""Shared test fixtures: paths to the real data sets beside the repository (../shared/data)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def shared(*parts: str) -> Path:
    """A path under ../shared/data; fails (never skips) when the data is missing."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"shared data set missing: {path} (see ../shared/data/README.md)")
    return path


@pytest.fixture(scope="session")
def vocab_file() -> Path:
    return shared("vocab", "bert-base-uncased", "vocab.txt")


@pytest.fixture(scope="session")
def squad_dev_file() -> Path:
    return shared("squad", "v1.1", "dev-v1.1.json")
