import os
import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser


class Command(BaseCommand):
    help = (
        "For local runs: create an 'admin' superuser the first time, keep its password in a "
        "git-ignored file, and print how to log in."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--credentials-file",
            type=Path,
            default=Path(settings.BASE_DIR) / ".local" / "admin-password",
        )
        parser.add_argument("--url", default="http://127.0.0.1:8000/")

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.DEBUG:
            # It prints a superuser's password: never where output goes to a platform's logs.
            raise CommandError("local_admin is for local runs (DJANGO_DEBUG=true) only.")
        User = get_user_model()
        path: Path = options["credentials_file"]
        username = "admin"
        user = User.objects.filter(username=username).first()
        if user is None:
            password = secrets.token_urlsafe(12)
            User.objects.create_superuser(username, "admin@example.com", password)
            path.parent.mkdir(parents=True, exist_ok=True)
            # Created private, not made private after the password is in it.
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w") as credentials:
                credentials.write(password + "\n")
        elif path.exists():
            password = path.read_text().strip()
        else:
            password = "(the one you chose; `python manage.py changepassword admin` resets it)"
        self.stdout.write(f"Log in at {options['url']} as {username} / {password}")
