"""Shared pytest set-up: torch's threads as the CLI sets them, tests marked ``cuda`` skipped at collection
without a GPU, one tiny model file."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True, scope="session")
def cli_threads() -> None:
    """torch's CPU threads as every in-process CLI call sets them (``default_threads``: one on 2 cores,
    where two stall at OpenMP barriers whenever another process takes a core). Without this the count
    changed at the first such call, so a test's speed depended on which tests ran before it."""
    import torch

    from realtime_lrp.cli.options import default_threads

    torch.set_num_threads(default_threads())


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
