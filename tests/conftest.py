"""Shared test fixtures.

``shared_data(relpath)`` is the one way tests reach the datasets of ``../shared/data``: it returns
the path, skips when the dataset is absent on a developer machine, and fails under ``CI=true``
(where a missing dataset is an error, not a skip). ``MLPOT_SHARED_DATA`` overrides the location.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MLPOT_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def shared_data():
    def get(relpath: str) -> Path:
        path = SHARED_DATA / relpath
        if not path.exists():
            message = f"dataset {relpath!r} not found under {SHARED_DATA}"
            if _in_ci():
                pytest.fail(message)
            pytest.skip(message)
        return path

    return get


@pytest.fixture(params=[torch.float32, torch.float64], ids=["float32", "float64"])
def dtype(request):
    """Run a physics test in both precisions."""
    return request.param


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield
