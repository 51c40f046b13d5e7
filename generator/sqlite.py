"""What an SQLite connection needs that depends on its file, which Django's init_command cannot
say."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db.backends.base.base import BaseDatabaseWrapper


def wal_checkpoint_size(sender: Any, connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
    """Checkpoint every SQLITE_WAL_CHECKPOINT_BYTES of WAL, whatever the file's page size (a
    file made before new ones got bigger pages keeps its own)."""
    if connection.vendor != "sqlite":
        return
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA page_size")
        (page_bytes,) = cursor.fetchone()
        pages = max(1, settings.SQLITE_WAL_CHECKPOINT_BYTES // page_bytes)
        cursor.execute(f"PRAGMA wal_autocheckpoint={pages:d}")
