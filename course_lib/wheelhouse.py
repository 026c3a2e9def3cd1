"""A wheelhouse for an offline GPU machine: every wheel the course needs that its image lacks.

    python -m course_lib.wheelhouse build [--python 3.12] [--extras test,notebooks]
                                          [--base gpu-image|torch] [--out wheelhouse]

It takes course_lib's requirements and those of the chosen extras from pyproject.toml, drops what
the base image already has, resolves the rest for the target interpreter on manylinux x86_64 with
pip's own resolver (a dry run with the target's platform tags and constraints.txt) and downloads
the result as binary wheels. Pure-Python wheels work on any target; compiled ones are
fetched for the target's Python and platform. The result installs with no network:

    pip install --no-index --find-links wheelhouse -e ".[test,notebooks]"

Base images (packages never downloaded, because the image provides them):
* ``torch``: a stock CUDA PyTorch image: torch, triton, the nvidia/cuda runtime wheels and torch's
  own dependencies, plus numpy and pip's tooling.
* ``gpu-image``: the course's GPU machine, whose image also has transformers, matplotlib, pytest
  and more (tools/gpu_image_packages.txt). This is the small wheelhouse that travels with the repo.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from .env import REPO_ROOT

PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64", "any")
TORCH_IMAGE = {
    "torch", "triton", "numpy", "filelock", "fsspec", "jinja2", "markupsafe", "mpmath", "networkx",
    "sympy", "typing-extensions", "setuptools", "pip", "wheel",
}
TORCH_IMAGE_PREFIXES = ("nvidia-", "cuda-")
GPU_IMAGE_LIST = REPO_ROOT / "tools" / "gpu_image_packages.txt"


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def base_packages(base: str) -> set[str]:
    names = set(TORCH_IMAGE)
    if base == "gpu-image":
        names |= {normalize(line) for line in GPU_IMAGE_LIST.read_text().split() if not line.startswith("#")}
    elif base != "torch":
        raise ValueError(f"Unknown base image {base!r}: use 'torch' or 'gpu-image'.")
    return names


def in_base(name: str, base: set[str]) -> bool:
    name = normalize(name)
    return name in base or name.startswith(TORCH_IMAGE_PREFIXES)


def pip_target_args(python: str) -> list[str]:
    major, minor = python.split(".")[:2]
    args = ["--only-binary=:all:", "--python-version", f"{major}.{minor}", "--implementation", "cp",
            "--abi", f"cp{major}{minor}", "--abi", "abi3", "--abi", "none"]
    for platform in PLATFORMS:
        args += ["--platform", platform]
    return args


def requirements(extras: str, base: set[str]) -> list[str]:
    """course_lib's own requirements plus those of `extras`, from pyproject.toml, minus the base image.

    The base image's packages are dropped before resolving, so pip never has to resolve torch and
    its CUDA wheels for the target (they are the image's business).
    """
    from packaging.requirements import Requirement

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    optional = project["optional-dependencies"]
    todo, seen, reqs = [e.strip() for e in extras.split(",") if e.strip()], set(), list(project["dependencies"])
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        if extra not in optional:
            raise ValueError(f"course_lib has no extra {extra!r}; it has {', '.join(optional)}.")
        seen.add(extra)
        for line in optional[extra]:
            req = Requirement(line)
            if normalize(req.name) == "course-lib":
                todo += list(req.extras)
            else:
                reqs.append(line)
    return sorted({r for r in reqs if not in_base(Requirement(r).name, base)})


def resolve(python: str, reqs: list[str], workdir: Path) -> list[dict]:
    """pip's resolution of `reqs` for the target: a list of {name, version}."""
    report = workdir / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
           "--report", str(report), "--target", str(workdir / "target"), *pip_target_args(python),
           "-c", str(REPO_ROOT / "constraints.txt"), *reqs]
    subprocess.run(cmd, check=True)
    items = json.loads(report.read_text())["install"]
    return [{"name": i["metadata"]["name"], "version": i["metadata"]["version"]} for i in items]


def build(python: str, extras: str, base: str, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    skip = base_packages(base)
    with tempfile.TemporaryDirectory() as tmp:
        resolved = resolve(python, requirements(extras, skip), Path(tmp))
    wanted = [r for r in resolved if not in_base(r["name"], skip)]
    if wanted:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(out),
                        *pip_target_args(python), *[f"{r['name']}=={r['version']}" for r in wanted]], check=True)
    lock = out / "requirements.txt"
    lock.write_text("".join(f"{r['name']}=={r['version']}\n" for r in sorted(wanted, key=lambda r: normalize(r["name"]))))
    size = sum(p.stat().st_size for p in out.glob("*.whl"))
    provided = sorted(r["name"] for r in resolved if in_base(r["name"], skip))
    print(f"{len(wanted)} wheels, {size / 2**20:.1f} MiB in {out} for Python {python} (base image '{base}')")
    print(f"left to the image: {', '.join(provided)}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.wheelhouse", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--python", default="3.12", help="target interpreter version (default 3.12)")
    b.add_argument("--extras", default="test,notebooks", help="course_lib extras to include")
    b.add_argument("--base", default="gpu-image", choices=["gpu-image", "torch"])
    b.add_argument("--out", type=Path, default=REPO_ROOT / "wheelhouse")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"3\.\d+", args.python):
        parser.error(f"--python takes a version like 3.12, not {args.python!r}")
    build(args.python, args.extras, args.base, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
