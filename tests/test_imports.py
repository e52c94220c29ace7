"""Imports run one way: no cycle between first-party modules (files, not packages), counting
imports inside functions. (The layer contracts are import-linter's, in .importlinter; they
run in `make test` too.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("iacplatform", "tasks_app", "agents_app")


def _module_cycles() -> list[list[str]]:
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    cycles: dict[frozenset[str], list[str]] = {}
    for importer in sorted(graph.modules):
        if importer.split(".")[-1] == "migrations" or ".migrations." in importer:
            continue
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            # A package's __init__ importing its own children is not a cycle between files.
            if importer.startswith(imported + ".") or imported.startswith(importer + "."):
                continue
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back:
                cycle = [importer, *back]
                cycles.setdefault(frozenset(cycle), cycle)
    return list(cycles.values())


def test_it_has_no_import_cycle_between_modules():
    cycles = _module_cycles()
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_it_keeps_the_import_contracts():
    result = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-logo", "--no-cache"], cwd=ROOT,
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
