"""The embedded default: runs with no environment variable set (quick start, development)."""
from pathlib import Path

from .base import *  # noqa: F403
from .base import LOCAL_DIR, STATIC_ROOT, STORAGES, env

DEBUG = env.bool("DEBUG", default=True)
# A fixed key is fine on a developer's machine and nowhere else: production.py refuses it.
SECRET_KEY = env.str("SECRET_KEY", default="django-insecure-local-only-not-for-production")
# With no ENCRYPTION_KEYS, integrations/crypto.py derives a key "local" from SECRET_KEY.
STORAGES = {
    **STORAGES,
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
LOCAL_DIR.mkdir(exist_ok=True)
Path(STATIC_ROOT).mkdir(parents=True, exist_ok=True)  # whitenoise warns when it is missing
