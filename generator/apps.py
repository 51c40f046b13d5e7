from django.apps import AppConfig


class GeneratorConfig(AppConfig):
    name = "generator"
    verbose_name = "Generator"

    def ready(self) -> None:
        from django.contrib import admin

        from . import dashboard, jobs, rq_guard

        # Every process (web, worker, cron) reads Redis through rq: guard it in each one.
        rq_guard.install(jobs.RQ_ENTRY_POINTS)
        dashboard.admin_register(admin.site)
