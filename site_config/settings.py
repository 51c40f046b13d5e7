"""Settings for Generator, read once from the environment (12-factor).

Every default lives here, and every check of what the environment gives: a bad value stops
start-up, in every process, with one line naming the variable (manage.py prints
ImproperlyConfigured so). generator/conf.py gives the app typed names for the GENERATOR_ settings
and holds no default or rule of its own.

Production is the default: debug off, and no start without a secret key, on every platform. A
laptop gets its configuration from a private, git-ignored `.env` that scripts/run and
scripts/test write on first use (a random DJANGO_SECRET_KEY and DJANGO_DEBUG=true); the
environment itself always wins over that file.
"""

import os
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import dj_database_url
from croniter import croniter
from django.core.exceptions import ImproperlyConfigured
from django.utils.csp import CSP
from dotenv import load_dotenv

BASE_DIR = Path(__file__).resolve().parent.parent

# GENERATOR_ENV_FILE names another file; set to an empty value, it reads none.
ENV_FILE = os.environ.get("GENERATOR_ENV_FILE", str(BASE_DIR / ".env"))
if ENV_FILE:
    load_dotenv(ENV_FILE, override=False)


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a whole number, not {value!r}.") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, not {number}.")
    return number


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, "").strip() or default


def env_list(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name, "")
    items = [item.strip() for item in value.split(",") if item.strip()]
    return items or default


DEBUG = env_bool("DJANGO_DEBUG", False)

# Never a constant in the repository: a known key lets anyone forge sessions and messages.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "").strip()
if not SECRET_KEY:
    raise ImproperlyConfigured(
        "DJANGO_SECRET_KEY is not set: on a laptop run scripts/run or scripts/test once (they "
        "write a private .env), in production set DJANGO_SECRET_KEY."
    )

ALLOWED_HOSTS = env_list(
    "DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"] if DEBUG else []
)
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])
# The API's programs get their CSRF refusal as JSON; pages keep Django's own.
CSRF_FAILURE_VIEW = "generator.views.csrf_failure"

INSTALLED_APPS = [
    "generator",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_rq",
    "axes",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
    "generator.security.DashboardCspMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it turns a lockout into the lockout page.
    "axes.middleware.AxesMiddleware",
]

# Every page: only the app's own scripts, styles and forms; no frames, plugins or <base>.
SECURE_CSP = {
    "default-src": [CSP.SELF],
    "script-src": [CSP.SELF],
    "style-src": [CSP.SELF],
    "img-src": [CSP.SELF, "data:"],
    "connect-src": [CSP.SELF],
    "form-action": [CSP.SELF],
    "frame-ancestors": [CSP.NONE],
    "base-uri": [CSP.NONE],
    "object-src": [CSP.NONE],
}
# The django-rq dashboard's own templates carry inline scripts and styles (staff only).
DASHBOARD_CSP = {
    **SECURE_CSP,
    "script-src": [CSP.SELF, CSP.UNSAFE_INLINE],
    "style-src": [CSP.SELF, CSP.UNSAFE_INLINE],
}

# django-axes first: a locked-out login is refused before any password is hashed.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = 5
AXES_COOLOFF_TIME = timedelta(minutes=15)
# Per person and address: guessing one account is stopped, and nobody can lock others out.
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_CLIENT_IP_CALLABLE = "generator.security.client_ip"
# How many proxies in front of the app append to X-Forwarded-For (Heroku's router: 1).
GENERATOR_PROXY_COUNT = env_int("GENERATOR_PROXY_COUNT", 0, minimum=0)

# Error pages and reports hide passwords inside URLs too (DATABASE_URL, REDIS_URL, RQ_QUEUES).
DEFAULT_EXCEPTION_REPORTER_FILTER = "generator.error_reports.CredentialsHidingFilter"

ROOT_URLCONF = "site_config.urls"
WSGI_APPLICATION = "site_config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.config(
        default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60),
        conn_health_checks=True,
    )
}
# SQLite's page cache per connection, in KiB (its default is 2 MB). Each user inserts a random
# username into the username index, so once that index outgrows the cache nearly every insert
# reads a page back from the operating system. 64 MB holds the index of well over a million
# users; it is an upper bound, taken only as pages are read: the worker measured 134 MB in all
# at a million users.
SQLITE_CACHE_KIB = 64 * 1024
# SQLite's page for a new database file, in bytes (its default is 4,096; an existing file keeps
# its own). Each chunk's commit writes again every page of the username index its usernames
# touched, nearly all of them once the table is big: bigger pages write the same bytes in fewer
# WAL frames, each with its own header, checksum and write, and make the B-tree shallower
# (measured, in-process, a 200k batch into an empty table and into one of 800,000 users:
# 4 KiB 1.09 s and 1.33 s, 16 KiB 1.06 s and 1.20 s, 32 KiB 1.05 s and 1.17 s).
SQLITE_PAGE_BYTES = 32 * 1024
# WAL bytes after which a commit also copies the WAL back into the database (SQLite's default
# is 1,000 pages). With the default, a checkpoint, with two fsyncs, came after every chunk.
# Every ~160 MB of WAL (a file kept for reuse) a page touched by several chunks is copied once
# (measured at 4 KiB pages: 1M users 67k/s -> 82k/s at 10,000 pages; the fifth of five 200k
# batches into one table 1.50 s -> 1.29 s from 10,000 to 40,000). SQLite counts it in pages of
# the file's own size: generator.sqlite sets it on each connection. Still WAL with
# synchronous=NORMAL: a power cut may undo the last chunks committed, each whole, and their
# runs make them again.
SQLITE_WAL_CHECKPOINT_BYTES = 160 * 1024 * 1024
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The worker and the web server write to the same file: wait for the lock instead of
    # failing at once, and let readers go on while a chunk is being written (WAL).
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": (
            # page_size first: it only takes effect before the file's first page is written.
            f"PRAGMA page_size={SQLITE_PAGE_BYTES}; "
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; "
            f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}; PRAGMA temp_store=MEMORY;"
        ),
    }
    # A file, not memory, so that worker processes started by the tests see the same data.
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / ".local" / "test-db.sqlite3")}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "generator.User"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "generator:batch_list"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}

# Heroku's router terminates TLS and says so in X-Forwarded-Proto.
HTTPS = env_bool("DJANGO_HTTPS", not DEBUG)
if HTTPS:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 60 * 60 * 24 * 365)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    # Let the platform's own health checks and internal calls through on plain HTTP.
    SECURE_REDIRECT_EXEMPT = [r"^healthz/$"]


def redis_sentinel_settings(url: str) -> dict[str, Any]:
    """django-rq's connection settings for redis-sentinel://[:password@]host:port[,host:port
    ...]/master_name[/db]: the queue follows whichever server the sentinels say is master."""
    parts = urlsplit(url)
    credentials, _, hosts = parts.netloc.rpartition("@")
    password = unquote(credentials.partition(":")[2]) or None
    sentinels = []
    for host in hosts.split(","):
        name, _, port = host.rpartition(":") if ":" in host else (host, "", "26379")
        sentinels.append((name, int(port)))
    master_name, _, db = parts.path.strip("/").partition("/")
    if not master_name or not hosts:
        raise ImproperlyConfigured(
            "A sentinel REDIS_URL reads redis-sentinel://[:password@]host:port,.../master[/db]."
        )
    return {
        "SENTINELS": sentinels,
        "MASTER_NAME": master_name,
        "DB": int(db or 0),
        "PASSWORD": password,
        "SENTINEL_KWARGS": {"password": password},
    }


REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
RQ_QUEUE: dict[str, Any] = {
    "DEFAULT_TIMEOUT": env_int("RQ_DEFAULT_TIMEOUT", 60 * 60),
    # Pickle would let anyone who can write to Redis run code in the worker.
    "SERIALIZER": "rq.serializers.JSONSerializer",
}
if REDIS_URL.startswith("redis-sentinel://"):
    RQ_QUEUE.update(redis_sentinel_settings(REDIS_URL))
else:
    RQ_QUEUE["URL"] = REDIS_URL
if REDIS_URL.startswith("rediss://"):
    # Heroku Data for Redis serves TLS with a self-signed certificate.
    cert_reqs = os.environ.get("REDIS_SSL_CERT_REQS", "none")
    RQ_QUEUE["SSL_CERT_REQS"] = None if cert_reqs == "none" else cert_reqs
# The batches' jobs go to this queue; the reconcile and backup jobs to the maintenance queue, which
# the Procfile's `maintenance:` worker serves alone, so that a long batch never delays them.
# "default" stays as well, for django-rq's own commands; a worker serves only the queues its
# command names, so another name here needs a worker command that names it.
GENERATOR_QUEUE = env_str("GENERATOR_QUEUE", "default")
GENERATOR_MAINTENANCE_QUEUE = env_str("GENERATOR_MAINTENANCE_QUEUE", "maintenance")
RQ_QUEUES = {
    "default": RQ_QUEUE,
    GENERATOR_QUEUE: RQ_QUEUE,
    GENERATOR_MAINTENANCE_QUEUE: RQ_QUEUE,
}
RQ = {"COMMIT_MODE": "on_db_commit"}
RQ_SHOW_ADMIN_LINK = True
RQ_API_TOKEN = os.environ.get("RQ_API_TOKEN", "")

GENERATOR_MIN_TOTAL = env_int("GENERATOR_MIN_TOTAL", 50, minimum=1)
GENERATOR_MAX_TOTAL = env_int("GENERATOR_MAX_TOTAL", 500)
if GENERATOR_MAX_TOTAL < GENERATOR_MIN_TOTAL:
    raise ImproperlyConfigured(
        f"GENERATOR_MAX_TOTAL must be at least GENERATOR_MIN_TOTAL ({GENERATOR_MIN_TOTAL}), "
        f"not {GENERATOR_MAX_TOTAL}."
    )
GENERATOR_CLI_MAX_TOTAL = env_int("GENERATOR_CLI_MAX_TOTAL", 10_000_000, minimum=1)
# Users per transaction (and per progress step). SQLite commits rewrite every username-index
# page a chunk touched, and a growing table has more of them, so there fewer, longer
# transactions go much faster and stay flat as the table grows. On PostgreSQL each chunk's
# fixed cost (its round trips, its commit, a COPY's start) and a COPY sorted over fewer rows
# cost 1M users 16.9 s in chunks of 5,000, 13.4 s of 10,000, 11.8 s of 20,000 and of 50,000
# (README, "where the time goes"); 20,000 keeps progress steps of a fraction of a second.
GENERATOR_CHUNK_SIZE = env_int(
    "GENERATOR_CHUNK_SIZE",
    50_000 if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3" else 20_000,
    minimum=1,
)
GENERATOR_JOB_TIMEOUT = env_int("GENERATOR_JOB_TIMEOUT", 6 * 60 * 60, minimum=1)
GENERATOR_PAGE_SIZE = env_int("GENERATOR_PAGE_SIZE", 50, minimum=1)
# A run holds a chunk for this long at most. A lease also names the RQ worker and job holding
# it, and is void as soon as that worker stops beating (see the next setting), so the expiry
# only matters for a run outside RQ's workers.
GENERATOR_LEASE_SECONDS = env_int("GENERATOR_LEASE_SECONDS", 30, minimum=1)
# How often a worker running a job says it is alive; three beats missed and it counts as dead
# (on its own host, a worker whose process is gone is dead at once).
GENERATOR_WORKER_HEARTBEAT_SECONDS = env_int("GENERATOR_WORKER_HEARTBEAT_SECONDS", 2, minimum=1)
# How often a worker with nothing to do (and the cron process) looks for batches nothing works on.
GENERATOR_RECONCILE_INTERVAL_SECONDS = env_int(
    "GENERATOR_RECONCILE_INTERVAL_SECONDS", 30, minimum=1
)
# A batch whose job is not in Redis yet is left alone this long: the instant between the
# commit that records the job and the enqueue.
GENERATOR_RECONCILE_GRACE_SECONDS = env_int("GENERATOR_RECONCILE_GRACE_SECONDS", 2, minimum=0)
# How long a run waits for a database it cannot reach (a restart, a fail-over) before it fails
# the batch.
GENERATOR_DATABASE_WAIT_SECONDS = env_int("GENERATOR_DATABASE_WAIT_SECONDS", 300, minimum=0)
# Above this many users, a batch on PostgreSQL is worked on by several jobs at once.
GENERATOR_FANOUT_THRESHOLD = env_int("GENERATOR_FANOUT_THRESHOLD", 100_000)
GENERATOR_FANOUT_JOBS = env_int("GENERATOR_FANOUT_JOBS", 4, minimum=1)
# Up to this many users, a new batch's run is made in the worker's own process instead of a
# forked work horse (0: never). A fork and the pages it copies on write cost ~15 ms on 2 cores,
# a third of a 500-user form's wait, and nothing next to a big batch; such a run takes well
# under a second and a few MB, so it needs neither the horse's isolation nor its Stop button.
GENERATOR_IN_WORKER_MAX_TOTAL = env_int("GENERATOR_IN_WORKER_MAX_TOTAL", 5_000, minimum=0)
# Limits on what one person may ask for through the form and the API (not the CLI).
GENERATOR_MAX_ACTIVE_BATCHES_PER_USER = env_int(
    "GENERATOR_MAX_ACTIVE_BATCHES_PER_USER", 5, minimum=1
)
GENERATOR_MAX_USERS_PER_DAY = env_int("GENERATOR_MAX_USERS_PER_DAY", 100_000)
# Backups by RQ's cron scheduler (Procfile `cron:`) or `manage.py backup_now`.
GENERATOR_BACKUP_DIR = Path(env_str("GENERATOR_BACKUP_DIR", str(BASE_DIR / "backups")))
GENERATOR_BACKUP_KEEP = env_int("GENERATOR_BACKUP_KEEP", 24, minimum=1)
GENERATOR_BACKUP_CRON = env_str("GENERATOR_BACKUP_CRON", "0 * * * *")
# RQ's cron scheduler logs a bad expression and goes on without the job: a typo must stop
# start-up (the release phase first) instead of silently stopping the backups.
if not croniter.is_valid(GENERATOR_BACKUP_CRON):
    raise ImproperlyConfigured(
        f"GENERATOR_BACKUP_CRON must be a cron expression, not {GENERATOR_BACKUP_CRON!r}."
    )

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {
        "console": {"class": "generator.log.InterruptibleStreamHandler", "formatter": "plain"}
    },
    "loggers": {
        # A 500 in production leaves its traceback in the platform's log drain.
        "django.request": {"handlers": ["console"], "level": "ERROR", "propagate": False},
        "django.security": {"handlers": ["console"], "level": "WARNING", "propagate": False},
        "generator": {
            "handlers": ["console"],
            "level": os.environ.get("GENERATOR_LOG_LEVEL", "INFO"),
        },
    },
}

# An error tracker by one variable; off when unset. No personal data is sent.
SENTRY_DSN = os.environ.get("SENTRY_DSN", "").strip()
if SENTRY_DSN:
    import sentry_sdk

    sentry_sdk.init(
        dsn=SENTRY_DSN,
        environment=os.environ.get("SENTRY_ENVIRONMENT", "production"),
        send_default_pii=False,
        # Local variables carry the database's connection parameters and a batch's shared
        # password (Sentry scrubs names, not the keys inside a dict), and a request body the
        # password field: neither leaves the process.
        include_local_variables=False,
        max_request_body_size="never",
    )
