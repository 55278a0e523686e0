"""amora/core takes events and returns effects: it must not import I/O, clocks or SDKs."""

from __future__ import annotations

import ast
from pathlib import Path

import amora.core

FORBIDDEN = {
    "socket",
    "threading",
    "asyncio",
    "time",
    "subprocess",
    "select",
    "selectors",
    "ssl",
    "paho",
    "azure",
    "mpd",
    "urllib",
    "http",
    "shutil",
    "datetime",
}


def test_core_modules_import_no_io() -> None:
    core = Path(amora.core.__file__).parent
    offenders = []
    for path in sorted(core.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert offenders == []
