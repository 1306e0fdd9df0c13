"""The Raft core does no I/O: nothing in ``neostore/raft`` imports a clock, a
socket, a disk library, threads, an event loop, gRPC, or its own randomness."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import neostore.raft

RAFT_DIR = Path(neostore.raft.__file__).parent
FORBIDDEN = {"grpc", "asyncio", "time", "lmdb", "socket", "threading", "random", "selectors", "os"}


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            found.append((node.lineno, "__import__"))
    return found


SOURCES = sorted(RAFT_DIR.glob("*.py"))


def test_the_core_has_its_modules() -> None:
    names = {path.stem for path in SOURCES}
    assert {"raft", "rawnode", "log", "storage", "progress", "quorum"} <= names


@pytest.mark.parametrize("path", SOURCES, ids=[path.name for path in SOURCES])
def test_raft_module_imports_nothing_that_does_io(path: Path) -> None:
    offending = [
        f"{path.name}:{line} imports {name}"
        for line, name in _imported_modules(path)
        if name == "__import__" or name.split(".")[0] in FORBIDDEN
    ]
    assert offending == []


def test_the_check_would_see_a_forbidden_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    import time\n    from grpc import aio\n")
    assert [name for _, name in _imported_modules(sample)] == ["time", "grpc"]
