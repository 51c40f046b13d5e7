"""Jobs for RQ's cron scheduler: `python manage.py rqcron generator.cron` (Procfile `cron:`).

They go to the maintenance queue, which the Procfile's `maintenance:` worker serves alone, so a
multi-hour batch on the batch workers never delays them. The workers reconcile by themselves
(at start, after each job, between chunks, while idle): the scheduled reconcile is a safety net.
"""

from rq import cron

from . import conf, jobs

# A backup still waiting for a worker after this long gives way to the next one.
BACKUP_WAIT_SECONDS = 60 * 60

cron.register(
    jobs.batches_reconcile,
    queue_name=conf.maintenance_queue_name(),
    interval=conf.reconcile_interval_seconds(),
    # While every worker is busy with a long batch, a waiting reconcile is superseded by the
    # next one: let it expire instead of piling up in the queue.
    ttl=conf.reconcile_interval_seconds(),
    name="batches_reconcile",
)
cron.register(
    jobs.database_backup,
    queue_name=conf.maintenance_queue_name(),
    cron=conf.backup_cron(),
    ttl=BACKUP_WAIT_SECONDS,
    name="database_backup",
)
