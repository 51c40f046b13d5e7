from django.apps import AppConfig


class GeneratorConfig(AppConfig):
    name = "generator"
    verbose_name = "Generator"

    def ready(self) -> None:
        from django.contrib import admin
        from django.db.backends.signals import connection_created

        from . import dashboard, jobs, rq_guard, sqlite

        # Every process (web, worker, cron) reads Redis through rq: guard it in each one.
        rq_guard.install(jobs.RQ_ENTRY_POINTS)
        dashboard.admin_register(admin.site)
        connection_created.connect(sqlite.wal_checkpoint_size, dispatch_uid="wal_checkpoint_size")
