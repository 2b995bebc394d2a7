"""
test_install.py - the package installs offline with Debian's setuptools
(`pip install --no-build-isolation ./bindings/python`) and, after
`make python`, carries the library in the package folder, where the loader
finds it without LM_LIB_PATH.
"""
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT
from liquid_memory import _ffi


def _missing_tool():
    for mod in ("pip", "setuptools"):
        if subprocess.run([sys.executable, "-c", "import " + mod], capture_output=True).returncode:
            return mod
    return None


@pytest.mark.skipif(_missing_tool() is not None,
                    reason="this Python lacks pip or setuptools (Debian: python3-pip, "
                    "python3-setuptools)")
def test_offline_install_bundles_the_library(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(os.path.join(ROOT, "bindings", "python"), src,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "*.so"))
    lib = _ffi.binding().path
    shutil.copy(lib, src / "liquid_memory" / "libliquidmemory.so")  # make python
    # A self-contained build (make device-build) keeps the libraries it needs
    # beside it ($ORIGIN); the package carries them the same way.
    folder = os.path.dirname(lib)
    for name in os.listdir(folder):
        if ".so." in name:
            shutil.copy(os.path.join(folder, name), src / "liquid_memory" / name)
    # Installed into a folder of its own with this interpreter, whose torch the
    # package uses (--no-deps: an offline install does not fetch torch; a
    # nested venv may not see this interpreter's packages).
    site = tmp_path / "site"
    p = subprocess.run([sys.executable, "-m", "pip", "install", "--no-build-isolation",
                        "--no-index", "--no-deps", "--no-cache-dir", "--target", str(site),
                        str(src)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    env = {k: v for k, v in os.environ.items() if k not in ("LM_LIB_PATH", "PYTHONPATH")}
    env["PYTHONPATH"] = str(site)
    code = ("import liquid_memory, torch; i = liquid_memory.library_info(); print(i['path']); "
            "m = liquid_memory.LiquidMemory(16, 2); x = torch.randn(4, 1, 16); "
            "print(bool(torch.isfinite(m(x, x, x, need_weights=False)[0]).all()))")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=str(tmp_path),
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    path, ok = out.stdout.split()
    assert path.startswith(str(site)) and path.endswith("liquid_memory/libliquidmemory.so")
    assert ok == "True"
