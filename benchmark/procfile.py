"""The Procfile, read as a platform reads it: the one place that says how each process starts."""

from __future__ import annotations

import shlex
from pathlib import Path

from . import BenchmarkError

PROCFILE = Path(__file__).resolve().parent.parent / "Procfile"


def procfile(path: Path = PROCFILE) -> dict[str, str]:
    """Each process type's command line, by name (`web`, `worker`, ...)."""
    commands = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, separator, command = line.partition(":")
        if not separator:
            raise BenchmarkError(f"{path}: not a Procfile line: {line!r}")
        commands[name.strip()] = command.strip()
    return commands


def process_command(name: str, *extra_arguments: str) -> list[str]:
    """An argv that runs the Procfile's `name` line with extra arguments appended.

    Through bash, as platforms do, so that `${PORT:-8000}` and the like are expanded; `exec`
    makes the process itself bash's pid, so signals and memory figures are its own.
    """
    commands = procfile()
    if name not in commands:
        raise BenchmarkError(f"The Procfile has no {name}: line.")
    line = " ".join(["exec", commands[name], *map(shlex.quote, extra_arguments)])
    return ["bash", "-c", line]
