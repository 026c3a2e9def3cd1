"""The offline-GPU wheelhouse: what it resolves (no network: versions come from this environment)."""

import pytest

from course_lib.core import wheelhouse as wh
from course_lib.core.env import pinned_versions


def test_extras_expand_and_the_base_image_is_left_out():
    torch_base = wh.base_packages("torch")
    reqs = wh.requirements("test", torch_base)
    names = {wh.normalize(r.split(">")[0].split("=")[0]) for r in reqs}
    assert {"nbval", "ipykernel", "transformers"} <= names  # test pulls in notebooks, and the core deps
    assert "torch" not in names and "numpy" not in names
    gpu_base = wh.base_packages("gpu-image")
    assert "transformers" not in {wh.normalize(r.split(">")[0]) for r in wh.requirements("test", gpu_base)}
    with pytest.raises(ValueError, match="no extra"):
        wh.requirements("nope", torch_base)
    with pytest.raises(ValueError, match="base image"):
        wh.base_packages("docker")


def test_closure_uses_the_pinned_versions_and_stops_at_the_base():
    base = wh.base_packages("gpu-image")
    resolved = {wh.normalize(r["name"]): r["version"] for r in wh.resolve("3.12", ["nbval>=0.11"], base)}
    pins = pinned_versions()
    assert {"nbval", "jupyter-client", "ipykernel", "nbformat"} <= set(resolved)
    assert "pytest" not in resolved and "torch" not in resolved  # provided by the image
    assert all(pins[name] == version for name, version in resolved.items() if name in pins)
    assert wh.in_base("nvidia-cublas", base) and wh.in_base("Typing_Extensions", base)
