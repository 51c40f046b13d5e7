"""Jobs for RQ's cron scheduler: `python manage.py rqcron generator.cron` (Procfile `cron:`)."""

from rq import cron

from . import conf, jobs

cron.register(
    jobs.batches_reconcile,
    queue_name=conf.queue_name(),
    interval=conf.reconcile_interval_seconds(),
    name="batches_reconcile",
)
cron.register(
    jobs.database_backup,
    queue_name=conf.queue_name(),
    cron=conf.backup_cron(),
    name="database_backup",
)
