"""The compilers the kernels are built with: where they are and how they are called.

The CPU kernel is built with the platform's C++ compiler (OpenMP flags per platform), the CUDA kernel with the nvcc
of the CUDA toolkit torch was built for. On Windows, MSVC is located with vswhere and its environment imported from
vcvars64.bat when cl.exe is not on PATH already. Every lookup takes its filesystem and subprocess as arguments, so
tests can run the Windows logic anywhere.
"""

from __future__ import annotations

import ntpath
import os
import shutil
import subprocess
import sys
from typing import Callable, Mapping, MutableMapping

import torch

MSVC_HELP = (
    "MSVC was not found. Install Visual Studio 2022 Build Tools with the 'Desktop development with C++' workload "
    "from https://visualstudio.microsoft.com/visual-cpp-build-tools/ (or run from an 'x64 Native Tools Command "
    "Prompt' so that cl.exe is on PATH)."
)
VC_TOOLS_COMPONENT = "Microsoft.VisualStudio.Component.VC.Tools.x86.x64"


class KernelBuildError(RuntimeError):
    """A compiled kernel cannot be built here; the message says what to install."""


def cpu_compiler_flags(windows: bool = sys.platform == "win32") -> tuple[list[str], list[str]]:
    """(cflags, ldflags) for the CPU kernel: optimised, with OpenMP so that at::parallel_for runs threads."""
    if windows:
        return ["/O2", "/openmp"], []
    if sys.platform == "darwin":  # macOS torch uses its native thread pool, no OpenMP needed
        return ["-O3"], []
    # Under -fPIC (a shared library) GCC's default semantic interposition made the WKV-7 loops 1.7-2.4x slower even
    # in their AVX-512 build (wkv7_cpu.h, run_vectorised), in a standalone test.
    return ["-O3", "-fopenmp", "-fno-semantic-interposition"], ["-fopenmp"]


def check_cuda_toolkit(cuda_home: str | None, which: Callable[..., str | None] = shutil.which) -> str:
    """Path of nvcc for building the CUDA kernel; raises KernelBuildError saying which toolkit to install."""
    nvcc_name = "nvcc.exe" if sys.platform == "win32" else "nvcc"
    nvcc = os.path.join(cuda_home, "bin", nvcc_name) if cuda_home else which("nvcc")
    if not nvcc or not os.path.exists(nvcc):
        raise KernelBuildError(
            f"the CUDA kernel needs nvcc, but no CUDA toolkit was found (CUDA_HOME={cuda_home!r}). Install the CUDA "
            f"Toolkit {torch.version.cuda} (the version this torch was built with, torch.version.cuda) from "
            "https://developer.nvidia.com/cuda-toolkit-archive and set CUDA_HOME to it."
        )
    return nvcc


# --- Windows: locating MSVC ---------------------------------------------------------------------------------


def find_vswhere(environ: Mapping[str, str], exists: Callable[[str], bool]) -> str | None:
    """Path of vswhere.exe under %ProgramFiles(x86)%, or None."""
    program_files = environ.get("ProgramFiles(x86)", r"C:\Program Files (x86)")
    path = ntpath.join(program_files, "Microsoft Visual Studio", "Installer", "vswhere.exe")
    return path if exists(path) else None


def find_vcvars64(run: Callable, exists: Callable[[str], bool], environ: Mapping[str, str]) -> str:
    """Path of vcvars64.bat of the newest Visual Studio with the x64 C++ tools; raises KernelBuildError if none."""
    vswhere = find_vswhere(environ, exists)
    if vswhere is None:
        raise KernelBuildError(MSVC_HELP)
    result = run(
        [vswhere, "-latest", "-products", "*", "-requires", VC_TOOLS_COMPONENT, "-property", "installationPath"],
        capture_output=True,
        text=True,
    )
    installs = [line.strip() for line in (result.stdout or "").splitlines() if line.strip()]
    if result.returncode != 0 or not installs:
        raise KernelBuildError(MSVC_HELP)
    vcvars = ntpath.join(installs[0], "VC", "Auxiliary", "Build", "vcvars64.bat")
    if not exists(vcvars):
        raise KernelBuildError(f"{MSVC_HELP} (vswhere found {installs[0]}, but it has no {vcvars})")
    return vcvars


def parse_set_output(text: str) -> dict[str, str]:
    """The environment printed by cmd's `set`: NAME=value lines (other lines, e.g. vcvars' banner, are skipped)."""
    environment = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name and not name.startswith(("*", " ")):
            environment[name] = value
    return environment


def msvc_environment(run: Callable, exists: Callable[[str], bool], environ: Mapping[str, str]) -> dict[str, str]:
    """The environment after running vcvars64.bat (`cmd /c "vcvars64.bat && set"`)."""
    vcvars = find_vcvars64(run, exists, environ)
    result = run(f'cmd /c ""{vcvars}" && set"', capture_output=True, text=True, shell=True)
    environment = parse_set_output(result.stdout or "")
    if result.returncode != 0 or not any(name.upper() == "PATH" for name in environment):
        raise KernelBuildError(f"running {vcvars} failed: {(result.stderr or result.stdout or '').strip()[:500]}")
    return environment


def ensure_msvc(
    run: Callable = subprocess.run,
    exists: Callable[[str], bool] = os.path.exists,
    environ: MutableMapping[str, str] = os.environ,
    which: Callable[..., str | None] = shutil.which,
) -> None:
    """Makes cl.exe usable: if it is not on PATH already, imports the vcvars64.bat environment into `environ`."""
    if which("cl", path=environ.get("PATH", "")):
        return
    environ.update(msvc_environment(run, exists, environ))


def compiler_version(device_type: str) -> str:
    if device_type == "cuda":
        from torch.utils import cpp_extension

        command = [check_cuda_toolkit(cpp_extension.CUDA_HOME), "--version"]
    elif sys.platform == "win32":
        command = ["cl"]
    else:
        command = [os.environ.get("CXX", "c++"), "--version"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as error:
        return f"{command[0]} (version unknown: {error})"
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    if device_type == "cuda":
        return f"{command[0]}: {lines[-2] if len(lines) > 1 else ''}".strip()
    return f"{command[0]}: {lines[0] if lines else ''}"
