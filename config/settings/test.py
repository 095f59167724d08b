"""Settings for the test suite: the embedded default unless DATABASE_URL / REDIS_URL say otherwise."""
import os
from pathlib import Path

from .base import *  # noqa: F403
from .base import DATABASES, LOCAL_DIR, STATIC_ROOT, STORAGES, env

DEBUG = False
SECRET_KEY = "test-secret-key-not-used-anywhere-else"
ENCRYPTION_KEYS = [
    # two keys so that every test runs with rotation possible; the first encrypts
    "t2:" + "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI=",
    "t1:" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=",
]
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
STORAGES = {
    **STORAGES,
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
LIVE_EVENTS_POLL_SECONDS = 0.1
Q_CLUSTER = {**Q_CLUSTER, "sync": env.bool("Q_SYNC", default=True)}  # noqa: F405
LOCAL_DIR.mkdir(exist_ok=True)
Path(STATIC_ROOT).mkdir(parents=True, exist_ok=True)  # whitenoise warns when it is missing
if DATABASES["default"]["ENGINE"] == "config.backends.sqlite3":
    # A file, not memory, so that tests can start a server or worker process on it; one
    # per test run, so that two runs on one machine do not delete each other's database.
    DATABASES["default"]["TEST"] = {"NAME": str(LOCAL_DIR / f"test-{os.getpid()}.sqlite3")}
if "postgresql" in DATABASES["default"]["ENGINE"]:
    DATABASES["default"]["CONN_MAX_AGE"] = 0
# Tests of the rate limiter give their own rates; elsewhere spacing would only slow tests.
KOMMO_RATE_LIMIT_PER_SECOND = 1000
# Metric counts stay in memory until a test flushes them: a background flush would write
# into other tests' database state (and, at exit, into a database already dropped).
METRICS_FLUSH_SECONDS = env.float("METRICS_FLUSH_SECONDS", default=0)
