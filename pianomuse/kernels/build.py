"""Build and load the compiled WKV-7 kernels (JIT through torch.utils.cpp_extension and ninja).

`load_kernel` builds on first use into `$PIANOMUSE_KERNEL_DIR` (default: see `default_build_dir`). The Snakemake
`kernels` rule builds every kernel this machine can run and checks it against its twins through
`pianomuse.kernel_record`. Finding the compilers (MSVC on Windows, nvcc) is `pianomuse.kernels.toolchain`'s part.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from types import ModuleType

import torch

from pianomuse.files import atomic_write
from pianomuse.kernels.toolchain import KernelBuildError, check_cuda_toolkit, cpu_compiler_flags, ensure_msvc

try:
    import fcntl
except ImportError:  # Windows: cpp_extension's own lock file alone guards a build
    fcntl = None

CSRC = Path(__file__).resolve().parent / "csrc"  # package data: a wheel ships the sources it builds
SOURCES = {  # in CSRC
    "cpu": ["wkv7_cpu.cpp", "token_mix_cpu.cpp", "wkv_keys_cpu.cpp", "rwkv7_decode_cpu.cpp", "wkv7_cpu_binding.cpp"],
    "cuda": ["wkv7_cuda.cu", "wkv7_cuda_binding.cpp"],
}
EXTENSION_NAMES = {"cpu": "pianomuse_wkv7_cpu", "cuda": "pianomuse_wkv7_cuda"}
NVCC_FLAGS = ["-O3", "-lineinfo"]
SOURCE_SUFFIXES = {".cpp", ".cu", ".h", ".cuh"}  # what the kernel cache folder's name hashes (not editor files)

_loaded: dict[tuple[str, str], object] = {}


# --- building and loading -----------------------------------------------------------------------------------


def default_build_dir() -> Path:
    """$PIANOMUSE_KERNEL_DIR, else ~/.cache/pianomuse/kernels/torch-<version>-py<version>-<hash of the sources>:
    extensions are torch- and Python-ABI specific, and checkouts with different kernel sources must not rebuild
    over each other's, while those with the same sources share one build."""
    if os.environ.get("PIANOMUSE_KERNEL_DIR"):
        return Path(os.environ["PIANOMUSE_KERNEL_DIR"])
    digest = hashlib.sha256()
    for source in sorted(path for path in CSRC.iterdir() if path.suffix in SOURCE_SUFFIXES):
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    python = "".join(platform.python_version_tuple()[:2])
    name = f"torch-{torch.__version__}-py{python}-{digest.hexdigest()[:12]}"
    return Path.home() / ".cache" / "pianomuse" / "kernels" / name


def use_recorded_kernels(record_path: str | os.PathLike) -> None:
    """Makes this process load the kernels a build record (the `kernels` rule's) names, rather than build others."""
    os.environ["PIANOMUSE_KERNEL_DIR"] = json.loads(Path(record_path).read_text())["build_dir"]


def staged_sources(device_type: str, build_dir: str | os.PathLike) -> list[Path]:
    """The kernel's sources as copied into `build_dir/src`, from where every checkout compiles them.

    cpp_extension's ninja file names the sources by absolute path: compiling each checkout's own CSRC would
    recompile whenever a checkout at another path used the shared build. A copy is rewritten only when its
    content differs, so an unchanged one keeps its time stamp and ninja finds the build up to date.
    """
    src = Path(build_dir).resolve() / "src"
    src.mkdir(parents=True, exist_ok=True)
    for source in sorted(path for path in CSRC.iterdir() if path.suffix in SOURCE_SUFFIXES):
        copy = src / source.name
        if not copy.is_file() or copy.read_bytes() != source.read_bytes():
            atomic_write(copy, partial(shutil.copyfile, source))
    return [src / name for name in SOURCES[device_type]]


@contextmanager
def exclusive_build(directory: Path) -> Iterator[None]:
    """Holds an OS lock on `directory` for one build, and clears a lock file a killed build left behind.

    cpp_extension guards a build folder with a plain `lock` file and waits, silently and forever, while it exists:
    a build killed mid-way (Ctrl-C, a killed job) would hang every later one. An OS lock dies with its holder, so
    whoever holds it knows that a `lock` file it finds is stale.
    """
    if fcntl is None:
        yield
        return
    with open(directory / "build.flock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        baton = directory / "lock"
        if baton.exists():
            warnings.warn(f"removed {baton}, left by a kernel build that was killed", stacklevel=3)
            baton.unlink()
        yield


def _compile(device_type: str, build_dir: Path, verbose: bool) -> ModuleType:
    from torch.utils import cpp_extension

    if device_type not in SOURCES:
        raise ValueError(f"no WKV-7 kernel for device type {device_type!r}")
    if sys.platform == "win32":
        ensure_msvc()
    extra = {}
    if device_type == "cuda":
        check_cuda_toolkit(cpp_extension.CUDA_HOME)
        extra["extra_cuda_cflags"] = NVCC_FLAGS
    cflags, ldflags = cpu_compiler_flags()
    # Each extension gets its own directory: cpp_extension writes one build.ninja per build directory.
    directory = Path(build_dir).resolve() / device_type
    directory.mkdir(parents=True, exist_ok=True)
    with exclusive_build(directory):
        return cpp_extension.load(
            name=EXTENSION_NAMES[device_type],
            sources=[str(source) for source in staged_sources(device_type, build_dir)],
            extra_cflags=cflags,
            extra_ldflags=ldflags,
            build_directory=str(directory),
            with_cuda=device_type == "cuda",
            verbose=verbose,
            **extra,
        )


def load_kernel(device_type: str, build_dir: str | os.PathLike | None = None, verbose: bool = False) -> ModuleType:
    """The compiled kernel module for "cpu" or "cuda", built (or reused) on first call and cached per process."""
    directory = Path(build_dir) if build_dir is not None else default_build_dir()
    key = (device_type, str(directory.resolve()))
    if key not in _loaded:
        _loaded[key] = _compile(device_type, directory, verbose)
    return _loaded[key]


def compile_cuda_object(output: str | os.PathLike, arch: str = "sm_80", nvcc: str = "nvcc") -> Path:
    """Compiles CSRC/wkv7_cuda.cu to an object file only, with the flags cpp_extension uses; returns its path.

    It needs no GPU and no CUDA-enabled torch, so it checks on any machine with nvcc that the CUDA source compiles.
    Raises KernelBuildError with nvcc's messages if it does not.
    """
    from torch.utils import cpp_extension

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    # nvcc finds its own CUDA headers; a CPU-only torch has no CUDA_HOME to ask include_paths("cuda") about.
    includes = cpp_extension.include_paths("cpu") + [sysconfig.get_path("include")]
    # CPU-only torch wheels ship c10/cuda but not its build-generated macros header; its CUDA-build content is
    # this one define (c10/cuda is a shared library there).
    generated = "c10/cuda/impl/cuda_cmake_macros.h"
    if not any((Path(path) / generated).exists() for path in includes):
        stub_dir = output.parent / "torch_generated_include"
        (stub_dir / generated).parent.mkdir(parents=True, exist_ok=True)
        (stub_dir / generated).write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
        includes.append(str(stub_dir))
    command = [
        nvcc, "-c", str(CSRC / SOURCES["cuda"][0]), "-o", str(output), f"-arch={arch}", "-std=c++20",
        "--compiler-options", "-fPIC", f"-DTORCH_EXTENSION_NAME={EXTENSION_NAMES['cuda']}",
        *cpp_extension.COMMON_NVCC_FLAGS, *NVCC_FLAGS, *[f"-I{path}" for path in includes],
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise KernelBuildError(f"nvcc failed ({result.returncode}): {result.stderr.strip()[-4000:]}")
    return output
