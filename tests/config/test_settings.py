"""Every setting a deployment may change is documented, and production refuses unsafe defaults."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def settings_variables() -> set[str]:
    names = set()
    for path in (ROOT / "config").rglob("*.py"):
        names |= set(re.findall(r"""env(?:\.\w+)?\(\s*["']([A-Z_]+)["']""", path.read_text()))
        names |= set(re.findall(r"""environ\.setdefault\(\s*["']([A-Z_]+)["']""", path.read_text()))
    return names


def test_there_are_settings_to_check():
    assert {"DATABASE_URL", "REDIS_URL", "ENCRYPTION_KEYS", "SECRET_KEY"} <= settings_variables()


@pytest.mark.parametrize("name", sorted(settings_variables()))
def test_every_environment_variable_is_in_the_readme(name):
    assert f"`{name}`" in (ROOT / "README.md").read_text()


def run_check(env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "ENCRYPTION_KEYS"}}
    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=clean | {"DJANGO_SETTINGS_MODULE": "config.settings.production"} | env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_production_refuses_to_start_without_a_secret_key():
    result = run_check({})

    assert result.returncode != 0
    assert "SECRET_KEY must be set in production" in result.stderr


def test_production_refuses_to_start_without_encryption_keys():
    result = run_check({"SECRET_KEY": "x" * 50})

    assert result.returncode != 0
    assert "ENCRYPTION_KEYS must be set in production" in result.stderr


def test_a_metrics_network_that_is_not_a_network_stops_the_start_with_one_line():
    result = run_check({"SECRET_KEY": "x" * 50, "METRICS_ALLOWED_NETWORKS": "10.0.0.0/8,10.0.0.300/32"})

    assert result.returncode != 0
    assert "METRICS_ALLOWED_NETWORKS: '10.0.0.300/32' does not appear to be an IPv4 or IPv6 network" in result.stderr
