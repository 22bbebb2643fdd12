"""Shared pytest set-up: tests marked ``cuda`` are skipped at collection without a GPU."""
from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none is available")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
