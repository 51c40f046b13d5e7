"""Test settings: the real settings, pointed at the tests' own database and Redis DB index."""

import os
from pathlib import Path

# Never a person's .env (it may name their own database): the tests set what they need.
os.environ["GENERATOR_ENV_FILE"] = ""
os.environ.setdefault("DJANGO_SECRET_KEY", "tests-only-not-secret")
# Production-like, as CI and a platform run it; pages are tested with DEBUG off.
os.environ.setdefault("DJANGO_DEBUG", "false")
os.environ.setdefault("DJANGO_HTTPS", "false")
os.environ.setdefault("DJANGO_ALLOWED_HOSTS", "testserver,localhost,127.0.0.1")

from site_config.settings import *  # noqa: F403
from site_config.settings import RQ_QUEUES as SITE_QUEUES

# Never a person's data: the test runner makes its own database (test_<name>), and the queue
# lives in a Redis DB index of its own, flushed by the tests.
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
# Every queue the settings define (GENERATOR_QUEUE's too), each on that index.
RQ_QUEUES = {name: {**queue, "URL": TEST_REDIS_URL} for name, queue in SITE_QUEUES.items()}

# Manifest storage needs collectstatic; pages rendered in-process don't.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

# Two test runs at once on one machine each need their own test database.
if os.environ.get("TEST_DATABASE_NAME"):
    DATABASES["default"].setdefault("TEST", {})["NAME"] = os.environ["TEST_DATABASE_NAME"]  # noqa: F405
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":  # noqa: F405
    Path(DATABASES["default"]["TEST"]["NAME"]).parent.mkdir(exist_ok=True)  # noqa: F405
