import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: The real CIFAR-100 beside the repository (../shared/data); never copied into it.
SHARED_DATA = Path(os.environ.get("LTBENCH_SHARED_DATA", REPO.parent / "shared" / "data"))
CIFAR100_NPZ = SHARED_DATA / "cifar100.npz"


@pytest.fixture(scope="session")
def cifar_root() -> Path:
    if not CIFAR100_NPZ.is_file():
        pytest.skip(f"real CIFAR-100 not found at {CIFAR100_NPZ} (set LTBENCH_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _no_env_data_root(monkeypatch):
    monkeypatch.delenv("LTBENCH_DATA", raising=False)
