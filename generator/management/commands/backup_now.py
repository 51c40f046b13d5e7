from typing import Any

from django.core.management.base import BaseCommand, CommandError

from generator import backups, use_cases


class Command(BaseCommand):
    help = "Back the database up now, into GENERATOR_BACKUP_DIR, and print the backup's path."

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            path = use_cases.database_backup()
        except backups.BackupError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(str(path))
