"""Shared pytest set-up: tests marked ``cuda`` are skipped at collection without a GPU; one tiny model file."""
from __future__ import annotations

from pathlib import Path

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none is available")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """media's tiny model saved with its card, for every test that runs the tool on a model file."""
    from media import model_file

    return model_file(tmp_path_factory.mktemp("model"))
