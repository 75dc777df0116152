"""Build a real llama.cpp `llama-server` (CPU only) once and cache it outside the repository.

The sources come from the `llama-cpp-python` source distribution on PyPI, which vendors llama.cpp
with its `tools/server`. The build takes about 9 minutes of two cores (515 s measured on the 2-core
CI machine) and about 1 GB of scratch space, so the binary is cached in
`~/.cache/hwdash/llama-server-<version>/` (`HWDASH_CACHE` moves the cache) and reused by every run
and every checkout on the machine. A clean machine builds it on first use, just slower.

    .venv/bin/python bench/build_llama_server.py          # prints the binary's path
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "0.3.36"  # llama-cpp-python release whose vendored llama.cpp we build
CMAKE_OPTIONS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_CURL=OFF",  # no model downloads: the tests write their own model
    "-DGGML_NATIVE=OFF",  # a binary that runs on any x86-64 the cache may be copied to
    "-DBUILD_SHARED_LIBS=OFF",  # one self-contained file to cache
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=ON",
]


def cache_dir() -> Path:
    root = Path(os.environ.get("HWDASH_CACHE") or Path.home() / ".cache" / "hwdash")
    return root / f"llama-server-{VERSION}"


def binary_path() -> Path:
    return cache_dir() / "llama-server"


def build(jobs: int = 2, log=print) -> Path:
    """Return the cached llama-server, building it first (about 9 min on 2 cores) if it is missing."""
    target = binary_path()
    if target.is_file() and os.access(target, os.X_OK):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llama-build-", dir=target.parent) as scratch:
        work = Path(scratch)
        log(f"downloading llama-cpp-python=={VERSION} source distribution")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", "llama-cpp-python"]
            + ["--dest", str(work), f"llama-cpp-python=={VERSION}"],
            check=True,
        )
        sdist = next(work.glob("llama_cpp_python-*.tar.gz"))
        with tarfile.open(sdist) as tar:
            tar.extractall(work, filter="data")
        source = next(work.glob("llama_cpp_python-*/vendor/llama.cpp"))
        build_dir = work / "build"
        log(f"configuring {source}")
        subprocess.run(["cmake", "-S", str(source), "-B", str(build_dir), *CMAKE_OPTIONS], check=True)
        log(f"building llama-server with {jobs} jobs (about 9 min on 2 cores)")
        subprocess.run(
            ["cmake", "--build", str(build_dir), "--target", "llama-server", f"-j{jobs}"],
            check=True,
        )
        built = next(build_dir.rglob("llama-server"))
        # Copy then rename so a concurrent reader never sees a half-written binary.
        partial = target.with_suffix(".partial")
        shutil.copy2(built, partial)
        partial.rename(target)
    return target


if __name__ == "__main__":
    print(build(jobs=int(os.environ.get("JOBS", "2"))))
