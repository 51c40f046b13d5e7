from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection

from generator import benchmark


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


class Command(BaseCommand):
    help = (
        "Measure the app against the tutorial's loop, a raw insert floor, its worker's memory and "
        "the form's latency, on a scratch database and Redis DB index of its own."
    )

    def add_arguments(self, parser: CommandParser) -> None:
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
        parser.add_argument("--app-users", type=positive_int, metavar="N")
        parser.add_argument("--floor-users", type=positive_int, metavar="N")
        parser.add_argument("--memory-sizes", type=sizes_list, metavar="N,N")
        parser.add_argument("--posts", type=positive_int, metavar="N")
        parser.add_argument("--fanout-users", type=positive_int, metavar="N")
        parser.add_argument(
            "--redis-db",
            type=int,
            default=benchmark.DEFAULT_REDIS_DB,
            help="The Redis DB index the run takes for itself and flushes (default 14).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["quick"] and options["strict"]:
            raise CommandError("--strict needs the full sizes: targets mean nothing in --quick.")
        base = benchmark.QUICK_SIZES if options["quick"] else benchmark.FULL_SIZES
        sizes = benchmark.Sizes(
            tutorial_sample=options["tutorial_sample"] or base.tutorial_sample,
            app_users=options["app_users"] or base.app_users,
            floor_users=options["floor_users"] or base.floor_users,
            memory_sizes=options["memory_sizes"] or base.memory_sizes,
            posts=options["posts"] or base.posts,
            fanout_users=options["fanout_users"] or base.fanout_users,
        )
        json_path = options["json"] or (
            Path(settings.BASE_DIR) / "bench-results" / f"benchmark-{connection.vendor}.json"
        )
        try:
            report = benchmark.run(
                sizes=sizes,
                quick=options["quick"],
                redis_db=options["redis_db"],
                logs_dir=json_path.with_name(f"{json_path.stem}-logs"),
                log=lambda message: self.stderr.write(f"==> {message}"),
            )
        except benchmark.BenchmarkError as exc:
            raise CommandError(str(exc)) from exc
        benchmark.write_json(report, json_path)
        self.stdout.write(benchmark.format_table(report))
        self.stdout.write(f"\nFigures: {json_path}")
        if options["strict"] and report.missed:
            raise CommandError(f"Targets missed: {', '.join(report.missed)}.", returncode=1)
