"""The import rule of ARCHITECTURE.md, checked: entry points → use cases → domain → models,
and the queue adapter never calls back up."""

from __future__ import annotations

import ast
from pathlib import Path

from django.conf import settings

APP = Path(settings.BASE_DIR) / "generator"
# Who calls the use cases: each of them is an entry point.
ENTRY_POINTS = {
    "generator.views",
    "generator.admin",
    "generator.jobs",
    "generator.worker",
    "generator.cron",
    "generator.apps",
    "generator.urls",
    "generator.dashboard",
}
USE_CASES = "generator.use_cases"
# The adapters (the queue, the database writers) and what they may import of the app.
ADAPTERS = {
    "generator.queueing": {"generator.conf", "generator.models"},
    "generator.services.writers": {"generator.models"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(APP.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def app_imports(path: Path) -> set[str]:
    """The generator modules a file imports (a package's `from . import x` counts as x)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            imported.add(base)
            imported |= {f"{base}.{alias.name}" for alias in node.names}
    modules = {module_name(file) for file in APP.rglob("*.py") if "migrations" not in file.parts}
    # The bare package (`from . import x`) is no module of its own: x is what counts.
    return {
        module for module in imported if module in modules and module not in (name, "generator")
    }


APP_MODULES = {
    module_name(path): app_imports(path)
    for path in sorted(APP.rglob("*.py"))
    if "migrations" not in path.parts
}


def is_entry_point(module: str) -> bool:
    return module in ENTRY_POINTS or module.startswith("generator.management.commands.")


def test_no_module_below_the_entry_points_imports_one():
    offenders = {
        module: {name for name in imported if is_entry_point(name)}
        for module, imported in APP_MODULES.items()
        if not is_entry_point(module)
    }
    assert {module: names for module, names in offenders.items() if names} == {}


def test_only_entry_points_call_the_use_cases():
    callers = {module for module, imported in APP_MODULES.items() if USE_CASES in imported}
    assert {module for module in callers if not is_entry_point(module)} == set()


def test_an_adapter_never_calls_back_up():
    for adapter, allowed in ADAPTERS.items():
        assert APP_MODULES[adapter] <= allowed, adapter


def test_the_services_know_nothing_of_the_queue():
    for module, imported in APP_MODULES.items():
        if module.startswith("generator.services"):
            assert not imported & {"generator.queueing", "generator.reconciler", USE_CASES}
