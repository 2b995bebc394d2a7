"""
_build_backend.py - this package's PEP 517 build backend (pyproject.toml,
backend-path): setuptools' own, run on a temporary copy of this folder, so
that `pip install ./bindings/python` writes no build/ or *.egg-info/ into the
source tree. Editable installs (pip install -e) point at the source itself
and pass straight through to setuptools.
"""
import contextlib
import os
import shutil
import tempfile

from setuptools import build_meta as _setuptools

HERE = os.path.dirname(os.path.abspath(__file__))


@contextlib.contextmanager
def _in_a_copy():
    tmp = tempfile.mkdtemp(prefix="liquid-memory-build-")
    src = os.path.join(tmp, "src")
    shutil.copytree(HERE, src, ignore=shutil.ignore_patterns("build", "*.egg-info",
                                                             "__pycache__"))
    old = os.getcwd()
    os.chdir(src)
    try:
        yield
    finally:
        os.chdir(old)
        shutil.rmtree(tmp, ignore_errors=True)


def _in_copy(name):
    hook = getattr(_setuptools, name)

    def run(directory=None, *args, **kwargs):
        # pip's output folders are absolute already; make sure before moving.
        directory = os.path.abspath(directory) if directory else directory
        if kwargs.get("metadata_directory"):
            kwargs["metadata_directory"] = os.path.abspath(kwargs["metadata_directory"])
        with _in_a_copy():
            return hook(directory, *args, **kwargs) if directory is not None else \
                hook(*args, **kwargs)
    run.__name__ = name
    return run


def _requires(name):
    hook = getattr(_setuptools, name)

    def run(*args, **kwargs):
        with _in_a_copy():
            return hook(*args, **kwargs)
    run.__name__ = name
    return run


get_requires_for_build_wheel = _requires("get_requires_for_build_wheel")
get_requires_for_build_sdist = _requires("get_requires_for_build_sdist")
prepare_metadata_for_build_wheel = _in_copy("prepare_metadata_for_build_wheel")
build_wheel = _in_copy("build_wheel")
build_sdist = _in_copy("build_sdist")
for _name in ("get_requires_for_build_editable", "prepare_metadata_for_build_editable",
              "build_editable"):
    if hasattr(_setuptools, _name):
        globals()[_name] = getattr(_setuptools, _name)
