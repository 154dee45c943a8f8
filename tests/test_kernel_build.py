"""Kernel build logic: locating MSVC on Windows (with a fake filesystem and subprocess), the CUDA toolkit hint,
the checked build record, and a compile-only nvcc build of the CUDA source."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pianomuse import kernel_record
from pianomuse.files import write_json
from pianomuse.kernels import build, toolchain

PROGRAM_FILES = r"C:\Program Files (x86)"
VSWHERE = PROGRAM_FILES + r"\Microsoft Visual Studio\Installer\vswhere.exe"
INSTALL = r"C:\Program Files (x86)\Microsoft Visual Studio\2022\BuildTools"
VCVARS = INSTALL + r"\VC\Auxiliary\Build\vcvars64.bat"
MSVC_BIN = INSTALL + r"\VC\Tools\MSVC\14.40.33807\bin\Hostx64\x64"
VCVARS_OUTPUT = (
    "**********************************************************************\n"
    "** Visual Studio 2022 Developer Command Prompt v17.10.0\n"
    "**********************************************************************\n"
    "[vcvarsall.bat] Environment initialized for: 'x64'\n"
    f"Path={MSVC_BIN};C:\\Windows\\system32\n"
    "INCLUDE=C:\\msvc\\include\n"
    "LIB=C:\\msvc\\lib\n"
)


class FakeRun:
    """Stands in for subprocess.run: answers vswhere and `cmd /c vcvars64.bat && set`, recording every call."""

    def __init__(self, installs=(INSTALL,), vcvars_output=VCVARS_OUTPUT):
        self.installs, self.vcvars_output, self.calls = installs, vcvars_output, []

    def __call__(self, command, **kwargs):
        self.calls.append(command)
        if isinstance(command, list) and command[0] == VSWHERE:
            return subprocess.CompletedProcess(command, 0, "\n".join(self.installs) + "\n", "")
        if isinstance(command, str) and "vcvars64.bat" in command and command.endswith('&& set"'):
            return subprocess.CompletedProcess(command, 0, self.vcvars_output, "")
        raise AssertionError(f"unexpected command {command!r}")


def windows_environ():
    return {"ProgramFiles(x86)": PROGRAM_FILES, "PATH": r"C:\Windows\system32"}


def no_cl(name, path=None):
    return None


def test_vswhere_is_queried_for_the_x64_tools_and_vcvars64_found():
    run = FakeRun()
    assert toolchain.find_vcvars64(run, {VSWHERE, VCVARS}.__contains__, windows_environ()) == VCVARS
    command = run.calls[0]
    assert command[command.index("-requires") + 1] == "Microsoft.VisualStudio.Component.VC.Tools.x86.x64"
    assert command[1:] == [
        "-latest", "-products", "*", "-requires", "Microsoft.VisualStudio.Component.VC.Tools.x86.x64",
        "-property", "installationPath",
    ]  # fmt: skip


def test_ensure_msvc_imports_the_vcvars64_environment():
    environ, run = windows_environ(), FakeRun()
    toolchain.ensure_msvc(run=run, exists={VSWHERE, VCVARS}.__contains__, environ=environ, which=no_cl)
    assert environ["Path"].startswith(MSVC_BIN) and environ["INCLUDE"] == r"C:\msvc\include"
    assert run.calls[1] == f'cmd /c ""{VCVARS}" && set"'
    assert not any(name.startswith("*") or name.startswith("[") for name in environ)


def test_ensure_msvc_does_nothing_when_cl_is_on_path():
    environ, run = windows_environ(), FakeRun()
    toolchain.ensure_msvc(run=run, exists=lambda path: True, environ=environ, which=lambda name, path=None: "cl.exe")
    assert run.calls == [] and environ == windows_environ()


@pytest.mark.parametrize(
    "existing, installs",
    [(set(), (INSTALL,)), ({VSWHERE}, ()), ({VSWHERE}, (INSTALL,))],
    ids=["no-vswhere", "no-vc-tools-install", "no-vcvars64"],
)
def test_missing_msvc_says_what_to_install(existing, installs):
    with pytest.raises(toolchain.KernelBuildError) as error:
        run, environ = FakeRun(installs), windows_environ()
        toolchain.ensure_msvc(run=run, exists=existing.__contains__, environ=environ, which=no_cl)
    message = str(error.value)
    assert "Visual Studio 2022 Build Tools" in message and "'Desktop development with C++' workload" in message
    assert "https://visualstudio.microsoft.com/visual-cpp-build-tools/" in message


def test_failing_vcvars64_is_reported():
    run = FakeRun(vcvars_output="The system cannot find the path specified.\n")
    with pytest.raises(toolchain.KernelBuildError, match="vcvars64.bat failed"):
        toolchain.msvc_environment(run, {VSWHERE, VCVARS}.__contains__, windows_environ())


def test_missing_cuda_toolkit_names_the_version_to_install(monkeypatch):
    monkeypatch.setattr(toolchain.torch.version, "cuda", "12.8")
    with pytest.raises(toolchain.KernelBuildError, match=r"Install the CUDA Toolkit 12\.8"):
        toolchain.check_cuda_toolkit(None, which=lambda name: None)


def test_default_build_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PIANOMUSE_KERNEL_DIR", str(tmp_path))
    assert build.default_build_dir() == tmp_path
    monkeypatch.delenv("PIANOMUSE_KERNEL_DIR")
    assert build.default_build_dir().parts[-3:-1] == ("pianomuse", "kernels")


def test_default_build_dir_is_named_by_the_kernel_sources(monkeypatch, tmp_path):
    monkeypatch.delenv("PIANOMUSE_KERNEL_DIR", raising=False)
    (tmp_path / "kernel.cpp").write_text("int f() { return 1; }\n")
    (tmp_path / "kernel.cpp.swp").write_text("editor state")
    monkeypatch.setattr(build, "CSRC", tmp_path)
    first = build.default_build_dir()
    (tmp_path / "kernel.cpp.swp").write_text("other editor state")
    assert build.default_build_dir() == first  # only sources count
    (tmp_path / "kernel.cpp").write_text("int f() { return 2; }\n")
    assert build.default_build_dir() != first and build.default_build_dir().parent == first.parent


def test_build_kernels_writes_a_checked_record(tmp_path):
    # The default directory is the one `wkv7` builds into, so a built kernel is reused rather than compiled again.
    record = kernel_record.build_kernels(build.default_build_dir())
    write_json(record, tmp_path / "kernels" / "kernels.json")
    saved = json.loads((tmp_path / "kernels" / "kernels.json").read_text())
    assert saved["passed"] and saved["torch"] == build.torch.__version__
    cpu = saved["kernels"][0]
    assert cpu["name"] == "pianomuse_wkv7_cpu" and cpu["path"].endswith((".so", ".pyd")) and cpu["compiler"]
    wkv7_check, mix_check, keys_check, decode_check = cpu["checks"]
    assert set(wkv7_check["max_relative_error"]) == {"y", "state_out", "dr", "dw", "dk", "dv", "da", "db", "dstate"}
    assert mix_check["kernel"] == "token_mix" and mix_check["passed"]
    assert set(mix_check["max_relative_error"]) == {f"out{m}" for m in range(6)} | {"dx", "dx_prev", "dmix"}
    assert keys_check["kernel"] == "wkv_keys" and keys_check["passed"]
    assert set(keys_check["max_relative_error"]) == {"out0", "out1", "out2", "dk", "diclr", "dk_k", "dk_a"}
    assert decode_check["kernel"] == "decode_step" and decode_check["passed"]
    assert set(decode_check["max_relative_error"]) == {"logits", "att_x", "wkv", "ffn_x"}


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found")
def test_cuda_source_compiles_with_nvcc(tmp_path):
    obj = build.compile_cuda_object(tmp_path / "wkv7_cuda.o", arch="sm_80")
    assert obj.stat().st_size > 0


def test_every_checkout_compiles_the_same_staged_copy_of_its_sources(tmp_path, monkeypatch):
    """Checkouts at two paths with the same sources stage them to the same files, and an unchanged copy keeps its
    time stamp, so the build's ninja file and ninja's checks see nothing new; a changed source is copied again."""
    checkouts = [tmp_path / "one/csrc", tmp_path / "two/csrc"]
    for checkout in checkouts:
        shutil.copytree(build.CSRC, checkout, copy_function=shutil.copyfile)
    monkeypatch.setattr(build, "CSRC", checkouts[0])
    staged = build.staged_sources("cpu", tmp_path / "kernels")
    assert [path.name for path in staged] == build.SOURCES["cpu"]
    assert all(path.read_bytes() == (checkouts[0] / path.name).read_bytes() for path in staged)
    stamps = {path: path.stat().st_mtime_ns for path in (tmp_path / "kernels/src").iterdir()}
    assert {path.name for path in stamps} >= {"wkv7_cpu.h", "small_batch_matmul.h", *build.SOURCES["cpu"]}
    monkeypatch.setattr(build, "CSRC", checkouts[1])
    assert build.staged_sources("cpu", tmp_path / "kernels") == staged
    assert {path: path.stat().st_mtime_ns for path in stamps} == stamps
    (checkouts[1] / "wkv7_cpu.h").write_text("// edited\n")
    build.staged_sources("cpu", tmp_path / "kernels")
    assert (tmp_path / "kernels/src/wkv7_cpu.h").read_text() == "// edited\n"


LOAD = """
import sys
from pathlib import Path
from pianomuse.kernels import build
build.CSRC = Path(sys.argv[1])
print(build.load_kernel("cpu", sys.argv[2], verbose=True).__file__)
"""


@pytest.mark.slow
def test_a_checkout_at_another_path_reuses_a_build_as_is(tmp_path):
    """Built from one checkout, loaded from another with the same sources (fresh time stamps): nothing compiles."""
    checkouts = [tmp_path / "one/csrc", tmp_path / "two/csrc"]
    for checkout in checkouts:
        shutil.copytree(build.CSRC, checkout, copy_function=shutil.copyfile)
    outputs = []
    for checkout in checkouts:
        result = subprocess.run(
            [sys.executable, "-c", LOAD, checkout, tmp_path / "kernels"], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout)
    library = Path(outputs[0].splitlines()[-1])
    assert "ninja: no work to do" not in outputs[0] and "ninja: no work to do" in outputs[1]
    assert outputs[1].splitlines()[-1] == str(library)


@pytest.mark.skipif(build.fcntl is None, reason="the OS lock is POSIX's flock")
def test_a_lock_file_left_by_a_killed_build_is_cleared_instead_of_waited_on(tmp_path):
    (tmp_path / "lock").touch()  # what cpp_extension leaves when its build is killed
    with pytest.warns(UserWarning, match="left by a kernel build that was killed"):
        with build.exclusive_build(tmp_path):
            assert not (tmp_path / "lock").exists()


@pytest.mark.skipif(build.fcntl is None, reason="the OS lock is POSIX's flock")
def test_a_build_in_progress_elsewhere_is_waited_for(tmp_path):
    # Another process holds the OS lock, as a live build does, and its cpp_extension lock file exists.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time; f = open(sys.argv[1], 'w'); fcntl.flock(f, fcntl.LOCK_EX);"
            " open(sys.argv[2], 'w').close(); print('held', flush=True); time.sleep(2)",
            str(tmp_path / "build.flock"),
            str(tmp_path / "lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline() == "held\n"
    start = time.monotonic()
    with pytest.warns(UserWarning, match="killed"), build.exclusive_build(tmp_path):
        assert time.monotonic() - start > 1.5  # entered only once the holder let go (it holds the lock 2 s)
        assert not (tmp_path / "lock").exists()  # the holder left without removing it: stale, cleared
    holder.wait()
