"""
The Wokkel compatibility shim (L{invitesrv._wokkel}) is still needed, and
still enough: in fresh interpreters, Wokkel 18.0.0 fails to import on the
installed Twisted without it, and every Wokkel module the code base imports
(found by reading the source, so the list cannot go stale) imports with it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import invitesrv

PACKAGE = Path(invitesrv.__file__).parent


def python(code: str) -> subprocess.CompletedProcess:
    """Run C{code} in a fresh interpreter, outside the source tree."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd="/", check=False)


def wokkelModulesUsed() -> set[str]:
    """Every C{wokkel} module that a module of the package imports."""
    used = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("wokkel"):
                if node.module == "wokkel":
                    used.update(f"wokkel.{alias.name}" for alias in node.names)
                else:
                    used.add(node.module)
            elif isinstance(node, ast.Import):
                used.update(a.name for a in node.names if a.name.startswith("wokkel"))
    return used


def test_neededForCompatFlag():
    """Without the shim, wokkel.data_form (forms, ad-hoc commands) cannot be imported."""
    result = python("import wokkel.data_form")
    assert result.returncode != 0
    assert "cannot import name '_PY3' from 'twisted.python.compat'" in result.stderr


def test_neededForConstants():
    """Without the shim, Wokkel modules that use twisted.python.constants cannot be imported."""
    result = python("import wokkel.muc")
    assert result.returncode != 0
    assert "No module named 'twisted.python.constants'" in result.stderr


def test_importsWithShim():
    """With the shim imported first, every Wokkel module the package uses imports."""
    modules = sorted(wokkelModulesUsed())
    assert {"wokkel.data_form", "wokkel.disco", "wokkel.subprotocols"} <= set(modules)
    code = "import invitesrv._wokkel\n" + "".join(f"import {name}\n" for name in modules)
    code += "import wokkel.muc\n"
    result = python(code)
    assert result.returncode == 0, result.stderr


def test_packageImportsShimFirst():
    """Importing any invitesrv module is enough: the package itself loads the shim."""
    result = python("import invitesrv.host, wokkel.data_form, twisted.python.compat as c\n"
                    "assert c._PY3 is True")
    assert result.returncode == 0, result.stderr
