"""pytest plugin for the course (loaded with `-p course_lib.core.nbval_plugin`, see pyproject.toml).

* nbval: stderr is not compared. Warnings and progress bars go there and differ between library
  versions; the course never prints a result to stderr (tests/test_notebook_hygiene.py checks).
* `gpu` tests are skipped without CUDA, `network` tests unless COURSE_NETWORK_TESTS=1.
"""

from __future__ import annotations

import os

import pytest


def pytest_collectstart(collector) -> None:
    if getattr(collector, "path", None) is not None and collector.path.suffix == ".ipynb":
        if hasattr(collector, "skip_compare"):
            collector.skip_compare = tuple(collector.skip_compare) + ("stderr",)


def pytest_collection_modifyitems(config, items) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    network = os.environ.get("COURSE_NETWORK_TESTS") == "1"
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs CUDA: run on the GPU machine with `pytest -m gpu`"))
        if "network" in item.keywords and not network:
            item.add_marker(pytest.mark.skip(reason="needs the package registry: set COURSE_NETWORK_TESTS=1"))
