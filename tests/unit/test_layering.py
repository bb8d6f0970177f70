"""Imports point down only (DESIGN.md §2): functions → eventlog → domain; domain is pure.

Reads every module's source with `ast` (nothing is imported), including imports inside functions.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = ("domain", "eventlog", "functions", "deploy", "tests")
DOMAIN_FORBIDDEN_STDLIB = frozenset({
    "os", "time", "random", "socket", "asyncio", "subprocess", "pathlib", "io", "shutil",
    "tempfile", "threading", "multiprocessing", "secrets", "urllib", "http", "selectors", "signal",
})
EVENTLOG_FORBIDDEN = frozenset({"functions", "deploy", "litestar", "httpx", "aiohttp", "uvicorn"})
# package → the project packages it may import (its own included)
ALLOWED_OURS = {
    "domain": {"domain"},
    "eventlog": {"domain", "eventlog"},
    "functions": {"domain", "eventlog", "functions"},
    "deploy": {"domain", "eventlog", "functions", "deploy"},
}


def modules_imported(source: str, module: str) -> list[tuple[int, str]]:
    """(line, absolute dotted name) of every import in `source`; `module` resolves relative ones."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: -node.level]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((node.lineno, name))
    return found


def package_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def violations(package: str, module: str, source: str) -> list[str]:
    """What is wrong with the imports of `module` (a module of `package`), one message each."""
    out = []
    where = module.replace(".", "/") + ".py"
    for line, name in modules_imported(source, module):
        top = name.split(".")[0]
        if top == "tests":
            out.append(f"{where}:{line} imports the tests ({name})")
        elif top in OURS and top not in ALLOWED_OURS[package]:
            out.append(f"{where}:{line} {package}/ imports {name}: imports must point down")
        elif package == "domain" and top not in OURS:
            if top not in sys.stdlib_module_names and top != "msgspec":
                out.append(f"{where}:{line} domain/ imports {name}: only stdlib + msgspec")
            elif top in DOMAIN_FORBIDDEN_STDLIB:
                out.append(f"{where}:{line} domain/ imports {name}: domain/ does no I/O and reads no clock")
        elif package == "eventlog" and top in EVENTLOG_FORBIDDEN:
            out.append(f"{where}:{line} eventlog/ imports {name}")
    return out


@pytest.mark.parametrize("package", sorted(ALLOWED_OURS))
def test_package_imports_point_down_only(package: str) -> None:
    files = package_files(package)
    assert files, f"no modules found under {ROOT / package}"
    found = [v for path in files for v in violations(package, module_name(path), path.read_text())]
    assert found == []


def test_domain_modules_import_only_stdlib_and_msgspec() -> None:
    for path in package_files("domain"):
        tops = {name.split(".")[0] for _, name in modules_imported(path.read_text(), module_name(path))}
        assert tops <= set(sys.stdlib_module_names) | {"msgspec", "domain"}, path


@pytest.mark.parametrize(
    ("package", "source", "fragment"),
    [
        ("domain", "import os", "domain/ does no I/O"),
        ("domain", "def f():\n    from time import time", "domain/ does no I/O"),
        ("domain", "import asyncio.tasks", "domain/ does no I/O"),
        ("domain", "import pyarrow", "only stdlib + msgspec"),
        ("domain", "from eventlog import wal", "imports must point down"),
        ("domain", "from ..eventlog import wal", "imports must point down"),
        ("eventlog", "import httpx", "eventlog/ imports httpx"),
        ("eventlog", "from litestar import Litestar", "eventlog/ imports litestar"),
        ("eventlog", "from functions.fake_upstream import main", "imports must point down"),
        ("functions", "from deploy.cli import main", "imports must point down"),
        ("deploy", "from tests.golden import test_golden", "imports the tests"),
    ],
)
def test_checker_catches_a_bad_import(package: str, source: str, fragment: str) -> None:
    found = violations(package, f"{package}.m", source)
    assert len(found) == 1 and fragment in found[0], found


def test_checker_accepts_the_allowed_imports() -> None:
    ok = "from __future__ import annotations\nimport msgspec\nfrom typing import Literal\nfrom . import cost\n"
    assert violations("domain", "domain.m", ok) == []
    assert violations("eventlog", "eventlog.m", "import duckdb\nfrom domain.events import Event") == []
