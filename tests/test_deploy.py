"""The deployment files agree with each other and with the settings."""

import json
from pathlib import Path

from django.conf import settings

from .test_processes import procfile


def app_json() -> dict:
    return json.loads((Path(settings.BASE_DIR) / "app.json").read_text())


def test_app_json_starts_only_processes_the_procfile_defines():
    assert set(app_json()["formation"]) <= set(procfile()) - {"release"}


def test_app_json_sets_only_variables_the_settings_read():
    settings_source = (Path(settings.BASE_DIR) / "site_config" / "settings.py").read_text()
    for name in app_json()["env"]:
        assert f'"{name}"' in settings_source, name


def test_the_python_version_file_names_a_python_django_supports():
    major, minor = (Path(settings.BASE_DIR) / ".python-version").read_text().split(".")[:2]
    assert (int(major), int(minor)) >= (3, 12)
