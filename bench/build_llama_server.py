"""A real llama.cpp `llama-server` (CPU only), built once and cached outside the repository, and a
tiny random-weight model for it to serve.

The sources come from the `llama-cpp-python` source distribution on PyPI, which vendors llama.cpp
with its `tools/server`. The build takes about 6 minutes of two cores (375 s at -O1, below) and
about 1 GB of scratch space, so the binary is cached in
`~/.cache/hwdash/llama-server-<version>/` (`HWDASH_CACHE` moves the cache) and reused by every run
and every checkout on the machine. A clean machine builds it on first use, just slower.

    .venv/bin/python bench/build_llama_server.py          # prints the binary's path

:func:`write_tiny_model` writes a GGUF file with the ``gguf`` package (requirements-dev): a
``llama`` model of 2 layers, width 64, 4 heads, with random weights and a 286-token SentencePiece
vocabulary (``<unk> <s> </s>``, the 256 byte tokens, ``▁`` and a–z), about 480 KB. It generates
nonsense quickly, which is all a test of token counting needs.
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
    # -O1, not Release's -O3: the binary only serves the tests' 480 KB random model, where its speed
    # does not show, and a clean machine's CI waits for the compile (375 s instead of ~515 s on two
    # cores, measured 2026-11-30; dashboard/jobs/tests/test_llamacpp_e2e.py passes with either).
    "-DCMAKE_C_FLAGS_RELEASE=-O1 -DNDEBUG",
    "-DCMAKE_CXX_FLAGS_RELEASE=-O1 -DNDEBUG",
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
    """Return the cached llama-server, building it first (about 6 min on 2 cores) if it is missing."""
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
        log(f"building llama-server with {jobs} jobs (about 6 min on 2 cores)")
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


def write_tiny_model(path: Path, seed: int = 0) -> Path:
    """Write the tiny random-weight llama model to ``path`` (GGUF) and return it."""
    import gguf
    import numpy as np

    width, layers, heads, ff = 64, 2, 4, 128
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + ["▁"] + [chr(c) for c in range(97, 123)]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types += [gguf.TokenType.BYTE] * 256 + [gguf.TokenType.NORMAL] * 27
    scores = [0.0] * 259 + [-float(i) for i in range(27)]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("hwdash-tiny-random")
    writer.add_context_length(512)
    writer.add_embedding_length(width)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(width // heads)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    rng = np.random.default_rng(seed)

    def weights(*shape: int) -> np.ndarray:
        # numpy's (rows, columns) is ggml's (columns, rows): gguf reverses the shape on writing.
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    vocab = len(tokens)
    writer.add_tensor("token_embd.weight", weights(vocab, width))
    writer.add_tensor("output_norm.weight", np.ones(width, dtype=np.float32))
    writer.add_tensor("output.weight", weights(vocab, width))
    for i in range(layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(width, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"blk.{i}.{name}.weight", weights(width, width))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(width, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weights(ff, width))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weights(ff, width))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weights(width, ff))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


if __name__ == "__main__":
    print(build(jobs=int(os.environ.get("JOBS", "2"))))
