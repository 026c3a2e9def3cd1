"""The offline-GPU wheelhouse: what it resolves (no network: versions come from this environment) and the
slim bitsandbytes wheel (a fake one, built here)."""

import base64
import csv
import hashlib
import io
import subprocess
import sys
import zipfile

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


def fake_bnb_wheel(folder):
    """A tiny stand-in for bitsandbytes' wheel: a module, fake native libraries and a RECORD, as pip builds them."""
    files = {"bitsandbytes/__init__.py": b"__version__ = '0.50.2'\n",
             "bitsandbytes/libbitsandbytes_cpu.so": b"cpu",
             **{f"bitsandbytes/libbitsandbytes_cuda{v}.so": f"cuda {v}".encode() * 50 for v in ("126", "130", "132")},
             "bitsandbytes/libbitsandbytes_rocm72.so": b"rocm",
             "bitsandbytes/libbitsandbytes_xpu2026.so": b"xpu",
             "bitsandbytes-0.50.2.dist-info/METADATA": b"Metadata-Version: 2.1\nName: bitsandbytes\nVersion: 0.50.2\n",
             "bitsandbytes-0.50.2.dist-info/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: false\nTag: py3-none-any\n"}
    record = "".join(f"{name},{hash_of(data)},{len(data)}\n" for name, data in files.items())
    files["bitsandbytes-0.50.2.dist-info/RECORD"] = (record + "bitsandbytes-0.50.2.dist-info/RECORD,,\n").encode()
    wheel = folder / "bitsandbytes-0.50.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return wheel, files


def hash_of(data):
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def test_slim_bitsandbytes_keeps_the_cpu_and_chosen_cuda_libraries_and_a_true_record(tmp_path):
    wheel, files = fake_bnb_wheel(tmp_path)
    assert wh.slim_bitsandbytes(wheel, ["130", "132"]) == wheel  # in place, same name
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        contents = {name: zf.read(name) for name in names}
    record_name = "bitsandbytes-0.50.2.dist-info/RECORD"
    dropped = {"bitsandbytes/libbitsandbytes_cuda126.so", "bitsandbytes/libbitsandbytes_rocm72.so",
               "bitsandbytes/libbitsandbytes_xpu2026.so"}
    assert names == [name for name in files if name not in dropped]  # order kept too
    assert all(contents[name] == files[name] for name in names if name != record_name)
    rows = list(csv.reader(io.StringIO(contents[record_name].decode())))
    assert [row[0] for row in rows] == names
    assert rows[-1] == [record_name, "", ""]
    for name, digest, size in rows[:-1]:
        assert digest == hash_of(contents[name]) and int(size) == len(contents[name])


def test_slim_bitsandbytes_names_the_versions_the_wheel_has(tmp_path):
    wheel, _ = fake_bnb_wheel(tmp_path)
    before = wheel.read_bytes()
    with pytest.raises(ValueError, match=r"no library for CUDA 999; it has CUDA 126, 130, 132"):
        wh.slim_bitsandbytes(wheel, ["130", "999"])
    assert wheel.read_bytes() == before


def test_the_slim_wheel_installs_with_pip_offline(tmp_path):
    wheel, _ = fake_bnb_wheel(tmp_path)
    wh.slim_bitsandbytes(wheel, [wh.BNB_CUDA])
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
                    "--no-index", "--target", str(target), str(wheel)], check=True)
    assert sorted(p.name for p in (target / "bitsandbytes").glob("*.so")) == [
        "libbitsandbytes_cpu.so", "libbitsandbytes_cuda130.so"]


def test_bnb_cuda_option():
    assert wh.bnb_cuda_versions("130") == ("130",)
    assert wh.bnb_cuda_versions("130, 132") == ("130", "132")
    assert wh.bnb_cuda_versions("none") == ()
    assert "bitsandbytes" not in wh.LEFT_OUT
    with pytest.raises(ValueError, match="13.0 is 130"):
        wh.bnb_cuda_versions("13.0")
