"""`python -m benchmark`: measure the app end to end against the tutorial's loop and the engine's
own floors, as the table grows and with more workers, its worker's memory and the form's latency,
on a scratch database and Redis DB index of its own.

A plain program, not a management command, so that nothing of it ships in the app: it sets up
Django with the project's real settings only to make and check its scratch storage, and drives
the app from outside (scripts/benchmark runs it with the project's environment).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

import django

from . import BenchmarkError

DEFAULT_REDIS_DB = 14


def positive_int(value: str) -> int:
    """An argparse type: a whole number above zero."""
    number = int(value)
    if number < 1:
        raise ValueError(value)
    return number


def sizes_list(value: str) -> tuple[int, ...]:
    """An argparse type: comma-separated batch sizes, at least two."""
    sizes = tuple(positive_int(item) for item in value.split(",") if item.strip())
    if len(sizes) < 2:
        raise ValueError(value)
    return sizes


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scripts/benchmark",
        description=(
            "Measure the app end to end against the tutorial's loop and the engine's own floors, "
            "as the table grows and with more workers, its worker's memory and the form's "
            "latency, on a scratch database and Redis DB index of its own."
        ),
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="Tiny sizes, same code paths (for the test suite); targets are not enforced.",
    )
    parser.add_argument(
        "--json",
        type=Path,
        metavar="PATH",
        help="Where to write the figures (default bench-results/benchmark-<engine>.json).",
    )
    parser.add_argument(
        "--strict", action="store_true", help="Exit with status 1 when a target is missed."
    )
    parser.add_argument("--tutorial-sample", type=positive_int, metavar="N")
    parser.add_argument(
        "--post-users", type=positive_int, metavar="N", help="The form POST's batch (500)."
    )
    parser.add_argument(
        "--cli-users", type=positive_int, metavar="N", help="The CLI's batch (200,000)."
    )
    parser.add_argument(
        "--big-users",
        type=positive_int,
        metavar="N",
        help="The CLI's big batch (1,000,000); the memory figure also runs twice as many.",
    )
    parser.add_argument("--posts", type=positive_int, metavar="N", help="Enqueue latency POSTs.")
    parser.add_argument(
        "--repeats", type=positive_int, metavar="N", help="Runs per figure, best taken (3)."
    )
    parser.add_argument(
        "--big-repeats",
        type=positive_int,
        metavar="N",
        help="Runs per big-batch figure, the floors' and the fan-out's included (3).",
    )
    parser.add_argument(
        "--redis-db",
        type=int,
        default=DEFAULT_REDIS_DB,
        help="The Redis DB index the run takes for itself and flushes (default %(default)s).",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0, or 1 when it could not measure (or, with --strict, a target missed)."""
    options = parser()
    arguments = options.parse_args(argv)
    if arguments.quick and arguments.strict:
        options.error("--strict needs the full sizes: targets mean nothing in --quick.")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "site_config.settings")
    from django.core.exceptions import ImproperlyConfigured

    try:
        django.setup()
    except ImproperlyConfigured as error:
        print(f"Error: {error}", file=sys.stderr)
        return 1
    # Only once Django is set up: these import the app's models.
    from django.conf import settings
    from django.db import connection

    from . import report, runner
    from . import sizes as sizes_module

    base = sizes_module.QUICK_SIZES if arguments.quick else sizes_module.FULL_SIZES
    sizes = dataclasses.replace(
        base,
        **{
            name: getattr(arguments, name)
            for name in (
                "tutorial_sample",
                "post_users",
                "cli_users",
                "big_users",
                "posts",
                "repeats",
                "big_repeats",
            )
            if getattr(arguments, name) is not None
        },
    )
    json_path = arguments.json or (
        Path(settings.BASE_DIR) / "bench-results" / f"benchmark-{connection.vendor}.json"
    )
    try:
        result = runner.run(
            sizes=sizes,
            quick=arguments.quick,
            redis_db=arguments.redis_db,
            logs_dir=json_path.with_name(f"{json_path.stem}-logs"),
            log=lambda message: print(f"==> {message}", file=sys.stderr, flush=True),
        )
    except BenchmarkError as error:
        print(f"Error: {error}", file=sys.stderr)
        return 1
    report.write_json(result, json_path)
    print(report.format_table(result))
    print(f"\nFigures: {json_path}")
    if arguments.strict and result.missed:
        print(f"Error: targets missed: {', '.join(result.missed)}.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
