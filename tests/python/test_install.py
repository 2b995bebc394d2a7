"""
test_install.py - the documented install on Debian 12 works offline and
leaves the source tree as it was: a virtual environment that sees Debian's
packages (python3 -m venv --system-site-packages), then
`python -m pip install --no-build-isolation --no-deps ./bindings/python`;
after `make python` the package carries the library, where the loader finds
it without LM_LIB_PATH. And a CPU-only process maps no CUDA library.
"""
import os
import re
import shutil
import site
import subprocess
import sys

import pytest

from conftest import ROOT
from liquid_memory import _ffi

CUDA_LIB = re.compile(r"lib(cuda|cudart|cublas|cublasLt|nvrtc|nvJitLink|cudnn|nvToolsExt)"
                      r"[^/]*\.so")


def _missing_tool():
    for mod in ("pip", "setuptools", "venv"):
        if subprocess.run([sys.executable, "-c", "import " + mod], capture_output=True).returncode:
            return mod
    return None


def _tree(root):
    """Every path under root (relative), for a before/after comparison."""
    out = set()
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            out.add(os.path.relpath(os.path.join(d, name), root))
    return out


@pytest.mark.skipif(_missing_tool() is not None,
                    reason="this Python lacks pip, setuptools or venv (Debian: python3-pip, "
                    "python3-setuptools)")
def test_documented_install_in_a_venv(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(os.path.join(ROOT, "bindings", "python"), src,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "*.so",
                                                  "*.so.*"))
    lib = _ffi.binding().path
    shutil.copy(lib, src / "liquid_memory" / "libliquidmemory.so")  # make python
    # A self-contained build (make device-build) keeps the libraries it needs
    # beside it ($ORIGIN); the package carries them the same way.
    folder = os.path.dirname(lib)
    for name in os.listdir(folder):
        if ".so." in name:
            shutil.copy(os.path.join(folder, name), src / "liquid_memory" / name)
    before = _tree(src)
    venv = tmp_path / "venv"
    # --without-pip: the venv uses Debian's pip through the system site
    # packages (python3-venv, which ensurepip needs, is then not required).
    p = subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip",
                        str(venv)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    py = str(venv / "bin" / "python")
    if sys.prefix != sys.base_prefix:
        # This Python is itself a venv (torch installed in it, as on the GPU machine):
        # --system-site-packages reaches only the base interpreter's packages, so the
        # new venv sees this one's through a .pth file, as README_INTEGRATION.md says.
        purelib = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 capture_output=True, text=True, check=True).stdout.strip()
        with open(os.path.join(purelib, "parent_venv.pth"), "w") as f:
            f.write("\n".join(site.getsitepackages()) + "\n")
    p = subprocess.run([py, "-m", "pip", "install", "--no-build-isolation", "--no-deps",
                        "--no-index", "--no-cache-dir", str(src)], capture_output=True,
                       text=True, cwd=str(tmp_path))
    assert p.returncode == 0, p.stdout + p.stderr
    assert _tree(src) == before, "the build wrote into the source tree: %s" % sorted(
        _tree(src) - before)
    env = {k: v for k, v in os.environ.items() if k not in ("LM_LIB_PATH", "PYTHONPATH")}
    code = ("import liquid_memory, torch; i = liquid_memory.library_info(); print(i['path']); "
            "m = liquid_memory.LiquidMemory(16, 2); x = torch.randn(4, 1, 16); "
            "print(bool(torch.isfinite(m(x, x, x, need_weights=False)[0]).all()))")
    out = subprocess.run([py, "-c", code], env=env, cwd=str(tmp_path), capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    path, ok = out.stdout.split()
    assert path.startswith(str(venv)) and path.endswith("liquid_memory/libliquidmemory.so")
    assert ok == "True"


def _needed(path):
    """The shared libraries `path` names (ELF DT_NEEDED), or None without readelf."""
    try:
        p = subprocess.run(["readelf", "-d", path], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", p.stdout)


_MAPS = ("import re, sys\n"
         "libs = sorted({l.split()[-1] for l in open('/proc/self/maps') if '.so' in l})\n"
         "print('\\n'.join(x for x in libs if re.search(sys.argv[1], x)))\n")


def _cuda_libs_mapped(code):
    """The CUDA libraries a Python process running `code` has mapped."""
    out = subprocess.run([sys.executable, "-c", code + "\n" + _MAPS, CUDA_LIB.pattern],
                         capture_output=True, text=True, env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def test_cpu_only_use_maps_no_cuda_library():
    """Importing the package, a CPU forward, a step and the functional call
    load no CUDA library beyond what torch itself loads."""
    lib = _ffi.binding().path
    needed = _needed(lib)
    if needed is None:
        pytest.skip("readelf is not available to read %s's dependencies" % lib)
    linked = [n for n in needed if CUDA_LIB.search(n)]
    if linked:
        pytest.skip("%s links %s itself (this build has its CUDA backend inside the library; "
                    "a CPU-only machine needs a CUDA=0 build until the backend is a separate, "
                    "lazily loaded library)" % (lib, ", ".join(linked)))
    torch_own = _cuda_libs_mapped("import torch")
    ours = _cuda_libs_mapped(
        "import torch, liquid_memory as lm\n"
        "m = lm.LiquidMemory(16, 2, batch_first=True).eval()\n"
        "x = torch.randn(2, 5, 16)\n"
        "with torch.no_grad():\n"
        "    m(x, x, x, is_causal=True, need_weights=False); m.step(x[:, 0])\n"
        "    lm.linear_attention(torch.randn(1, 4, 2, 8), torch.randn(1, 4, 2, 8),\n"
        "                        torch.randn(1, 4, 2, 8))\n")
    assert ours - torch_own == set(), "CUDA libraries loaded for CPU work: %s" % sorted(
        ours - torch_own)
