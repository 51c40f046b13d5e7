"""The settings: every default with an empty environment, every bad value stopped at start-up
in one line, GENERATOR_QUEUE, and generator.conf reading what a test overrides."""

import dataclasses
import json
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from generator import conf

from .support import environment_variables_the_settings_read, manage

# Each field of conf.GeneratorSettings (and its accessor, conf.<field>()) and the setting, named
# as the environment variable that sets it.
SETTING_NAMES = {
    field.name: f"GENERATOR_{field.name.upper()}"
    for field in dataclasses.fields(conf.GeneratorSettings)
} | {"queue_name": "GENERATOR_QUEUE", "maintenance_queue_name": "GENERATOR_MAINTENANCE_QUEUE"}

DEFAULTS = {
    "min_total": 50,
    "max_total": 500,
    "cli_max_total": 10_000_000,
    "chunk_size": 50_000,  # the bare environment is SQLite; PostgreSQL's default is 5,000
    "job_timeout": 6 * 60 * 60,
    "page_size": 50,
    "queue_name": "default",
    "maintenance_queue_name": "maintenance",
    "lease_seconds": 30,
    "worker_heartbeat_seconds": 2,
    "fanout_threshold": 100_000,
    "fanout_jobs": 4,
    "in_worker_max_total": 5_000,
    "reconcile_grace_seconds": 2,
    "reconcile_interval_seconds": 30,
    "database_wait_seconds": 300,
    "max_active_batches_per_user": 5,
    "max_users_per_day": 100_000,
    "backup_dir": str(Path(django_settings.BASE_DIR) / "backups"),
    "backup_keep": 24,
    "backup_cron": "0 * * * *",
}

# What a process started with these settings sees: each conf accessor, and the queues.
SHOW_SETTINGS = (
    "import json, django_rq; from django.conf import settings; from generator import conf;"
    f"accessors = {sorted(SETTING_NAMES)!r};"
    "print(json.dumps({"
    " 'conf': {name: str(getattr(conf, name)()) for name in accessors},"
    " 'proxy_count': settings.GENERATOR_PROXY_COUNT,"
    " 'queues': sorted(settings.RQ_QUEUES),"
    " 'same_redis': all(queue == settings.RQ_QUEUES['default']"
    "                   for queue in settings.RQ_QUEUES.values()),"
    " 'rq_queue': django_rq.get_queue(conf.queue_name()).name,"
    "}))"
)

# One bad value for each variable the settings check, and the one line that stops start-up.
BAD_VALUES = [
    ("GENERATOR_MIN_TOTAL", "0", "GENERATOR_MIN_TOTAL must be at least 1, not 0."),
    (
        "GENERATOR_MAX_TOTAL",
        "49",
        "GENERATOR_MAX_TOTAL must be at least GENERATOR_MIN_TOTAL (50), not 49.",
    ),
    ("GENERATOR_CLI_MAX_TOTAL", "0", "GENERATOR_CLI_MAX_TOTAL must be at least 1, not 0."),
    ("GENERATOR_CHUNK_SIZE", "5k", "GENERATOR_CHUNK_SIZE must be a whole number, not '5k'."),
    ("GENERATOR_JOB_TIMEOUT", "0", "GENERATOR_JOB_TIMEOUT must be at least 1, not 0."),
    ("GENERATOR_PAGE_SIZE", "0", "GENERATOR_PAGE_SIZE must be at least 1, not 0."),
    ("GENERATOR_LEASE_SECONDS", "0", "GENERATOR_LEASE_SECONDS must be at least 1, not 0."),
    (
        "GENERATOR_RECONCILE_INTERVAL_SECONDS",
        "0",
        "GENERATOR_RECONCILE_INTERVAL_SECONDS must be at least 1, not 0.",
    ),
    (
        "GENERATOR_RECONCILE_GRACE_SECONDS",
        "soon",
        "GENERATOR_RECONCILE_GRACE_SECONDS must be a whole number, not 'soon'.",
    ),
    (
        "GENERATOR_WORKER_HEARTBEAT_SECONDS",
        "0",
        "GENERATOR_WORKER_HEARTBEAT_SECONDS must be at least 1, not 0.",
    ),
    (
        "GENERATOR_DATABASE_WAIT_SECONDS",
        "-1",
        "GENERATOR_DATABASE_WAIT_SECONDS must be at least 0, not -1.",
    ),
    (
        "GENERATOR_FANOUT_THRESHOLD",
        "lots",
        "GENERATOR_FANOUT_THRESHOLD must be a whole number, not 'lots'.",
    ),
    ("GENERATOR_FANOUT_JOBS", "0", "GENERATOR_FANOUT_JOBS must be at least 1, not 0."),
    (
        "GENERATOR_IN_WORKER_MAX_TOTAL",
        "-1",
        "GENERATOR_IN_WORKER_MAX_TOTAL must be at least 0, not -1.",
    ),
    (
        "GENERATOR_MAX_ACTIVE_BATCHES_PER_USER",
        "0",
        "GENERATOR_MAX_ACTIVE_BATCHES_PER_USER must be at least 1, not 0.",
    ),
    (
        "GENERATOR_MAX_USERS_PER_DAY",
        "1e5",
        "GENERATOR_MAX_USERS_PER_DAY must be a whole number, not '1e5'.",
    ),
    ("GENERATOR_BACKUP_KEEP", "0", "GENERATOR_BACKUP_KEEP must be at least 1, not 0."),
    (
        "GENERATOR_BACKUP_CRON",
        "every hour",
        "GENERATOR_BACKUP_CRON must be a cron expression, not 'every hour'.",
    ),
    ("GENERATOR_PROXY_COUNT", "-1", "GENERATOR_PROXY_COUNT must be at least 0, not -1."),
    (
        "DATABASE_CONN_MAX_AGE",
        "forever",
        "DATABASE_CONN_MAX_AGE must be a whole number, not 'forever'.",
    ),
    ("RQ_DEFAULT_TIMEOUT", "1h", "RQ_DEFAULT_TIMEOUT must be a whole number, not '1h'."),
    ("DJANGO_HSTS_SECONDS", "a year", "DJANGO_HSTS_SECONDS must be a whole number, not 'a year'."),
]


def settings_seen(tmp_path: Path, **env: str) -> dict:
    shown = manage(
        "shell",
        "--no-imports",
        "-c",
        SHOW_SETTINGS,
        **{
            "DJANGO_SECRET_KEY": "tests-only-not-secret",
            "DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite3",
            **env,
        },
    )
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout.strip().splitlines()[-1])


@pytest.mark.processes
def test_every_default_holds_with_an_empty_environment(tmp_path: Path):
    seen = settings_seen(tmp_path)

    assert set(DEFAULTS) == set(SETTING_NAMES), "a GeneratorSettings field without a default"
    assert seen["conf"] == {name: str(value) for name, value in DEFAULTS.items()}
    assert seen["proxy_count"] == 0
    assert seen["queues"] == ["default", "maintenance"]
    assert seen["rq_queue"] == "default"


@pytest.mark.processes
def test_postgresql_has_chunks_of_its_own_by_default(tmp_path: Path):
    # Read, never connected to: the settings alone decide.
    seen = settings_seen(tmp_path, DATABASE_URL="postgres://nobody@127.0.0.1:1/none")

    assert seen["conf"]["chunk_size"] == "20000"


@pytest.mark.processes
def test_generator_queue_moves_the_apps_queue_and_django_rq_finds_it(tmp_path: Path):
    seen = settings_seen(tmp_path, GENERATOR_QUEUE="bulk")

    assert seen["conf"]["queue_name"] == "bulk"
    assert seen["rq_queue"] == "bulk"
    # django-rq's own "default" stays, on the same Redis and with the same serializer.
    assert seen["queues"] == ["bulk", "default", "maintenance"]
    assert seen["same_redis"]


@pytest.mark.processes
@pytest.mark.parametrize(
    ("variable", "value", "message"), BAD_VALUES, ids=[case[0] for case in BAD_VALUES]
)
def test_a_bad_value_stops_start_up_with_one_line_naming_the_variable(
    variable: str, value: str, message: str
):
    check = manage("check", DJANGO_SECRET_KEY="tests-only-not-secret", **{variable: value})

    assert check.returncode != 0
    assert check.stderr == f"Error: {message}\n"


def test_every_number_the_settings_read_has_its_bad_value_tried_above():
    numbers = {
        name
        for name, reader in environment_variables_the_settings_read().items()
        if reader == "env_int"
    }
    assert numbers <= {variable for variable, _, _ in BAD_VALUES}


def override_for(field: dataclasses.Field, number: int) -> object:
    """A value no default has, of the field's type."""
    kind = {"int": int, "str": str, "Path": Path}[str(field.type)]
    if kind is int:
        return 1_000 + number
    if kind is Path:
        return Path(f"/nowhere/backups-{number}")
    return f"value-{number}"


def test_the_settings_fixture_reaches_every_accessor(settings):
    overrides = {
        field.name: override_for(field, number)
        for number, field in enumerate(dataclasses.fields(conf.GeneratorSettings))
    }
    for name, value in overrides.items():
        setattr(settings, SETTING_NAMES[name], value)

    assert {name: getattr(conf, name)() for name in overrides} == overrides


def test_override_settings_reaches_conf_and_is_undone_after(settings):
    settings.GENERATOR_CHUNK_SIZE = 40
    with override_settings(GENERATOR_CHUNK_SIZE=3, GENERATOR_BACKUP_DIR="/nowhere/backups"):
        assert conf.chunk_size() == 3
        assert conf.backup_dir() == Path("/nowhere/backups")
    assert conf.chunk_size() == 40


@pytest.mark.parametrize("field", sorted(SETTING_NAMES))
def test_a_missing_setting_is_an_error_naming_it_never_a_second_default(settings, field: str):
    delattr(settings, SETTING_NAMES[field])

    with pytest.raises(ImproperlyConfigured, match=f"^{SETTING_NAMES[field]} is not set"):
        getattr(conf, field)()


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("GENERATOR_CHUNK_SIZE", "500", "GENERATOR_CHUNK_SIZE must be int, not str ('500')."),
        ("GENERATOR_PAGE_SIZE", True, "GENERATOR_PAGE_SIZE must be int, not bool (True)."),
        ("GENERATOR_QUEUE", None, "GENERATOR_QUEUE must be str, not NoneType (None)."),
        ("GENERATOR_BACKUP_DIR", 7, "GENERATOR_BACKUP_DIR must be a path, not int (7)."),
    ],
)
def test_a_setting_of_the_wrong_type_is_an_error_naming_it(
    settings, name: str, value: object, message: str
):
    setattr(settings, name, value)

    with pytest.raises(ImproperlyConfigured) as raised:
        conf.current()
    assert str(raised.value) == message


def test_the_settings_object_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        conf.current().chunk_size = 1  # type: ignore[misc]
