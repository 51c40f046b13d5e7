"""State changes: recording batches, generating and deleting their users. Knows nothing of
HTTP or RQ.

One module per sub-domain (ARCHITECTURE.md lists them); what callers use is re-exported
here, so `services.batch_create` and the like need no module name.
"""

from .accounts import EMAIL_DOMAIN, USERNAME_PREFIX, usernames_draw
from .chunks import NO_HOLDER, LeaseHolder, batch_generate_users
from .deletion import batch_users_delete, batch_users_delete_request
from .lifecycle import (
    ProgressCallback,
    batch_cancel,
    batch_fail,
    batch_record_enqueued,
    batch_record_job,
    batch_release,
    batch_reopen,
)
from .requests import BatchOptions, batch_create, batch_request
from .retries import interruption_behind
from .writers import USER_INSERT_COLUMNS

__all__ = [
    "EMAIL_DOMAIN",
    "NO_HOLDER",
    "USERNAME_PREFIX",
    "USER_INSERT_COLUMNS",
    "BatchOptions",
    "LeaseHolder",
    "ProgressCallback",
    "batch_cancel",
    "batch_create",
    "batch_fail",
    "batch_generate_users",
    "batch_record_enqueued",
    "batch_record_job",
    "batch_release",
    "batch_reopen",
    "batch_request",
    "batch_users_delete",
    "batch_users_delete_request",
    "interruption_behind",
    "usernames_draw",
]
