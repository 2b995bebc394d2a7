"""
test_loader.py - the library loader and the declaration table: the table
against include/liquid_memory.h (names, order, and sizes/offsets from a C
compiler), both bindings (cffi and ctypes) giving identical results, the
lookup order and its error messages, and the evaluation-mode license notice.
"""
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

import liquid_memory
from conftest import ROOT, rand_qkv
from liquid_memory import _core, _ffi, _ops

HEADER = os.path.join(ROOT, "include", "liquid_memory.h")
LIB = _ffi.binding().path


def _header_structs():
    text = re.sub(r"/\*.*?\*/", "", open(HEADER).read(), flags=re.S)
    out = {}
    for name, body in re.findall(r"typedef struct (\w+) \{(.*?)\} \1;", text, flags=re.S):
        fields = []
        for decl in body.split(";"):
            decl = decl.strip()
            if not decl:
                continue
            # "int64_t issued, not_before, expires" declares three fields
            base_and_names = decl.split(",")
            first = base_and_names[0]
            names = [re.sub(r"\[.*\]", "", first).replace("*", " ").split()[-1]]
            names += [re.sub(r"\[.*\]", "", n).replace("*", " ").strip() for n in base_and_names[1:]]
            fields += names
        out[name] = fields
    return out


def test_table_matches_header_names():
    structs = _header_structs()
    for name, fields in _ffi.STRUCTS:
        assert name in structs, "struct %s is not in the header" % name
        assert [f for _, f in fields] == structs[name], name
    text = open(HEADER).read()
    for fname, _, args, _ in _ffi.FUNCTIONS:
        m = re.search(r"LM_API [^;(]*\b%s\(([^)]*)\)" % fname, text)
        assert m, "%s is not declared in the header" % fname
        n_args = 0 if m.group(1).strip() in ("", "void") else m.group(1).count(",") + 1
        assert n_args == len(args), fname


@pytest.fixture(scope="module")
def c_layout(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler on PATH to measure the header's struct layout")
    d = tmp_path_factory.mktemp("layout")
    lines = ['#include <stdio.h>', '#include <stddef.h>', '#include "liquid_memory.h"',
             "int main(void) {"]
    for name, fields in _ffi.STRUCTS:
        lines.append('printf("%s %%zu\\n", sizeof(%s));' % (name, name))
        for _, f in fields:
            lines.append('printf("%s.%s %%zu\\n", offsetof(%s, %s));' % (name, f, name, f))
    for const in _ffi.CONSTANTS:
        lines.append('printf("%s %%lld\\n", (long long)%s);' % (const, const))
    lines.append("return 0; }")
    (d / "layout.c").write_text("\n".join(lines))
    subprocess.run([cc, "-I", os.path.join(ROOT, "include"), "-o", str(d / "layout"),
                    str(d / "layout.c")], check=True)
    out = subprocess.run([str(d / "layout")], check=True, capture_output=True, text=True).stdout
    return dict((k, int(v)) for k, v in (line.split() for line in out.splitlines()))


def test_constants_match_the_compiler(c_layout):
    for const, value in _ffi.CONSTANTS.items():
        assert c_layout[const] == value, const


@pytest.mark.parametrize("kind", ["cffi", "ctypes"])
def test_struct_layout_matches_the_compiler(kind, c_layout):
    if kind == "cffi" and not _ffi.cffi_available():
        pytest.skip("cffi is not importable here")
    b = _ffi.open_library(kind)
    for name, fields in _ffi.STRUCTS:
        assert b.sizeof(name) == c_layout[name], name
        for _, f in fields:
            assert b.offsetof(name, f) == c_layout["%s.%s" % (name, f)], (name, f)


@pytest.mark.parametrize("kind", ["cffi", "ctypes"])
def test_both_bindings_compute_the_same(kind, monkeypatch):
    if kind == "cffi" and not _ffi.cffi_available():
        pytest.skip("cffi is not importable here")
    q, k, v = rand_qkv(2, 70, 4, 8, Hkv=2, seed=1)
    mask = torch.zeros(2, 70, dtype=torch.bool)
    mask[1, 50:] = True
    monkeypatch.setattr(_ffi, "_binding", _ffi.open_library("ctypes"))
    want = _ops.prefill(q, k, v, mask, is_causal=True, want_state=True)
    b = _ffi.open_library(kind)
    assert b.kind == kind
    monkeypatch.setattr(_ffi, "_binding", b)
    got = _ops.prefill(q, k, v, mask, is_causal=True, want_state=True)
    for g, w in zip(got, want):
        assert torch.equal(g, w)
    S, z = got[1].clone(), got[2].clone()
    step = _ops.decode(q[:, :1], k[:, :1], v[:, :1], S, z, 70)
    assert torch.isfinite(step).all()
    assert b.version() == liquid_memory.library_info()["version"]
    with pytest.raises(_core.InvalidArgumentError, match="kv heads"):
        _ops.prefill(q, k[:, :, :1].expand(2, 70, 3, 8), v[:, :, :1].expand(2, 70, 3, 8))


@pytest.mark.parametrize("kind", ["cffi", "ctypes"])
def test_env_selects_the_binding(kind):
    if kind == "cffi" and not _ffi.cffi_available():
        pytest.skip("cffi is not importable here")
    code = "import liquid_memory; print(liquid_memory.library_info()['ffi'])"
    env = dict(os.environ, LM_PY_FFI=kind, LM_LIB_PATH=LIB,
               PYTHONPATH=os.path.join(ROOT, "bindings", "python"))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == kind


def test_ctypes_when_cffi_is_missing(monkeypatch):
    monkeypatch.setattr(_ffi, "cffi_available", lambda: False)
    assert _ffi.open_library(environ={"LM_LIB_PATH": LIB}).kind == "ctypes"
    with pytest.raises(ImportError, match="cffi is not importable"):
        _ffi.open_library(environ={"LM_LIB_PATH": LIB, "LM_PY_FFI": "cffi"})


def test_bad_ffi_choice():
    with pytest.raises(ValueError, match="LM_PY_FFI"):
        _ffi.open_library(environ={"LM_LIB_PATH": LIB, "LM_PY_FFI": "swig"})


def test_lm_lib_path_is_authoritative(tmp_path):
    missing = str(tmp_path / "nope" / "libliquidmemory.so")
    with pytest.raises(_ffi.LibraryNotFoundError) as e:
        _ffi.locate({"LM_LIB_PATH": missing}, package_dir=str(tmp_path))
    msg = str(e.value)
    assert missing in msg and "no such file" in msg and "LM_LIB_PATH is set" in msg
    assert "package folder" not in msg


def test_lm_lib_path_may_name_a_folder(tmp_path):
    shutil.copy(LIB, tmp_path / "libliquidmemory.so")
    path, _ = _ffi.locate({"LM_LIB_PATH": str(tmp_path)})
    assert path == str(tmp_path / "libliquidmemory.so")


def test_package_folder_then_system(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(_ffi.LibraryNotFoundError) as e:
        _ffi.locate({}, package_dir=str(empty), system=False)
    assert str(empty / "libliquidmemory.so") in str(e.value) and "make python" in str(e.value)
    full = tmp_path / "pkg"
    full.mkdir()
    shutil.copy(LIB, full / "libliquidmemory.so")
    path, _ = _ffi.locate({}, package_dir=str(full), system=False)
    assert path == str(full / "libliquidmemory.so")
    names = [w for w, _ in _ffi.candidate_paths({}, package_dir=str(empty), system=True)]
    assert names[0] == "package folder" and names[-1] == "system (dlopen)"


def test_not_liquid_memory(tmp_path):
    libm = __import__("ctypes.util").util.find_library("m")
    if not libm:
        pytest.skip("no libm to stand in for a foreign library")
    fake = tmp_path / "libliquidmemory.so"
    import ctypes
    src = ctypes.CDLL(libm)._name
    shutil.copy(src if os.path.isabs(src) else "/lib/x86_64-linux-gnu/" + src, fake)
    with pytest.raises(_ffi.LibraryNotFoundError, match="not Liquid Memory"):
        _ffi.locate({"LM_LIB_PATH": str(fake)})


def test_missing_symbol_is_lazy_and_named():
    b = _ffi.open_library(environ={"LM_LIB_PATH": LIB})
    assert not b.has("lm_no_such_function")
    with pytest.raises(_ffi.MissingSymbolError, match="lm_no_such_function"):
        b._fn("lm_no_such_function")


def test_import_without_library_is_fine_and_use_says_why(tmp_path):
    code = textwrap.dedent("""
        import liquid_memory, torch
        m = liquid_memory.LiquidMemory(8, 2)       # constructing needs no library
        x = torch.randn(3, 1, 8)
        try:
            m(x, x, x, need_weights=False)
        except liquid_memory.LibraryNotFoundError as e:
            print("ERR", e)
    """)
    env = dict(os.environ, LM_LIB_PATH=str(tmp_path / "missing.so"),
               PYTHONPATH=os.path.join(ROOT, "bindings", "python"))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert out.startswith("ERR") and "missing.so" in out and "Tried" in out


@pytest.mark.skipif(not _ffi.binding().has("lm_license_info"),
                    reason="the library under test has no license gate (lm_license_info)")
def test_evaluation_mode_warns_once_and_caps(tmp_path):
    code = textwrap.dedent("""
        import warnings, torch, liquid_memory
        from liquid_memory import _ops
        warnings.simplefilter("always")
        q = torch.randn(1, 16, 1, 4)
        with warnings.catch_warnings(record=True) as rec:
            _ops.prefill(q, q, q)
            _ops.prefill(q, q, q)
        lic = [w for w in rec if issubclass(w.category, liquid_memory.LicenseWarning)]
        print("WARNINGS", len(lic), "evaluation mode" in str(lic[0].message))
        big = torch.randn(1, 4097, 1, 4)
        try:
            _ops.prefill(big, big, big)
        except liquid_memory.LicenseError as e:
            print("CAPPED", e.status_name)
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("LM_LICENSE", "LM_LICENSE_FILE")}
    env.update(HOME=str(tmp_path), LM_LIB_PATH=LIB,
               PYTHONPATH=os.path.join(ROOT, "bindings", "python"))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert "WARNINGS 1 True" in out, out
    assert "CAPPED" in out, out
