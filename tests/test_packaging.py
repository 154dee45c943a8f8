"""A wheel of pianomuse, installed into a fresh virtual environment, ships the kernel sources and builds its
compiled kernels from them: a non-editable install must not silently fall back to the slow pure-PyTorch twins."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pianomuse.kernels.build import SOURCES

REPO = Path(__file__).resolve().parents[1]

# Run by the wheel's Python, away from the checkout: the compiled CPU kernel must load (a fallback warns with a
# RuntimeWarning, an error here) and pass its check against the twin.
IN_THE_VENV = """
import sys
import torch
import pianomuse
from pianomuse.kernels.build import CSRC
from pianomuse.kernels.checks import check_kernel
from pianomuse.kernels.wkv7 import compiled_kernel
assert pianomuse.__file__.startswith(sys.prefix), pianomuse.__file__
kernel = compiled_kernel("cpu")
assert kernel is not None
assert check_kernel(kernel, "cpu", torch.float32)["passed"]
print(CSRC)
"""


@pytest.mark.slow
def test_a_wheel_installed_in_a_fresh_venv_builds_its_kernels_from_the_shipped_sources(tmp_path):
    source = tmp_path / "source"  # a copy, so that the build leaves nothing in the checkout
    shutil.copytree(REPO / "pianomuse", source / "pianomuse", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ["pyproject.toml", "README.md"]:
        shutil.copy(REPO / name, source / name)
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "wheel"), str(source)]
    subprocess.run(build, check=True, capture_output=True, text=True)
    (wheel,) = (tmp_path / "wheel").glob("pianomuse-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    assert {f"pianomuse/kernels/csrc/{name}" for names in SOURCES.values() for name in names} <= shipped

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)]
    subprocess.run(install, check=True, capture_output=True, text=True)
    # The dependencies (torch, miditok, ...) come from this environment; pianomuse only from the wheel.
    venv_site = Path(
        subprocess.check_output([python, "-c", "import site; print(site.getsitepackages()[0])"], text=True).strip()
    )
    (venv_site / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    result = subprocess.run(
        [python, "-W", "error::RuntimeWarning", "-c", IN_THE_VENV],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert Path(result.stdout.strip()) == venv_site / "pianomuse" / "kernels" / "csrc"
