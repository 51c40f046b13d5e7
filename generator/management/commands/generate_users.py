import sys
import time
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from generator import conf, use_cases
from generator.formatting import duration, thousands
from generator.forms import BatchForm
from generator.models import Batch

BAR_WIDTH = 30


class Command(BaseCommand):
    help = "Enqueue a batch of N random users and print its id; --wait follows it to the end."
    # The system checks import every URLconf, admin and template to check them: ~0.1 s, a
    # fifth of this command's run and so of a 200k batch's wait. The release phase's `migrate`
    # and `manage.py check` run them; the batch is validated by its form as on the web.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("total", help="How many users to create.")
        parser.add_argument("--wait", action="store_true", help="Show progress until it is done.")
        parser.add_argument(
            "--password-stdin",
            action="store_true",
            help="Read one password for all the accounts from the first line of standard input.",
        )
        parser.add_argument("--requested-by", metavar="USERNAME", help="Record who asked.")
        parser.add_argument(
            "--realistic-names",
            action="store_true",
            help="Give the accounts realistic first and last names.",
        )
        parser.add_argument(
            "--seed",
            metavar="S",
            help="The same N and seed on a fresh database make the same accounts.",
        )
        parser.add_argument(
            "--poll-interval", type=float, default=0.5, help="Seconds between progress checks."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        password = sys.stdin.readline().rstrip("\r\n") if options["password_stdin"] else ""
        # The command line is for operators: it allows far bigger batches than the web form.
        form = BatchForm(
            data={
                "total": options["total"],
                "password": password,
                "realistic_names": options["realistic_names"],
                "seed": options["seed"],
            },
            min_total=1,
            max_total=conf.cli_max_total(),
        )
        if not form.is_valid():
            errors = "; ".join(
                f"{name}: {' '.join(str(message) for message in messages)}"
                for name, messages in form.errors.items()
            )
            raise CommandError(errors)
        requested_by = None
        if options["requested_by"]:
            User = get_user_model()
            try:
                requested_by = User.objects.get_by_natural_key(options["requested_by"])
            except User.DoesNotExist:
                raise CommandError(f"No user named {options['requested_by']!r}.") from None

        batch = use_cases.batch_submit(
            requested_by=requested_by, enforce_limits=False, **form.batch_options()
        )
        self.stdout.write(str(batch.pk))
        if options["wait"]:
            self.follow(batch, options["poll_interval"])

    def follow(self, batch: Batch, interval: float) -> None:
        interactive = self.stderr.isatty()
        last_line = ""
        while True:
            batch.refresh_from_db()
            filled = BAR_WIDTH * batch.percent // 100
            rate = f"{batch.rate:,.0f} users/s" if batch.rate else "waiting for a worker"
            line = (
                f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] "
                f"{thousands(batch.created_count)}/{thousands(batch.total)} "
                f"{batch.percent:3d}% {rate}"
            )
            if line != last_line:
                self.stderr.write(f"\r{line}" if interactive else line, ending="")
                if not interactive:
                    self.stderr.write("")
                last_line = line
            if batch.is_done:
                break
            time.sleep(interval)
        if interactive:
            self.stderr.write("")
        if batch.status == Batch.Status.FAILED:
            raise CommandError(f"Batch {batch.pk} failed: {batch.failure_reason}")
        if batch.status != Batch.Status.FINISHED:
            # Cancelled (or its users deleted) while we watched: not what was asked for.
            raise CommandError(
                f"Batch {batch.pk} is {batch.get_status_display().lower()}: "
                f"{batch.created_count} of {batch.total} users were created."
            )
        self.stderr.write(
            f"{thousands(batch.created_count)} users created in {duration(batch.elapsed or 0.0)}."
        )
