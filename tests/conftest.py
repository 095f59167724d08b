from __future__ import annotations

import os

import pytest
from django.core.cache import cache
from django.db import connections
from rest_framework.test import APIClient

from tests.factories import make_agent, make_user

# Server and worker processes of e2e tests (tests/live_server.py) work on the test database
# as the application role this run's migrations granted (PostgreSQL row-level security):
# named after the database, whose name they see as test_…, so they are told it.
os.environ.setdefault("DATABASE_APP_ROLE", connections["default"].settings_dict["OPTIONS"].get("app_role") or "")


@pytest.fixture(autouse=True)
def _clear_cache():
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def user(db):
    return make_user()


@pytest.fixture
def other_user(db):
    return make_user()


@pytest.fixture
def agent(user):
    return make_agent(owner=user)


@pytest.fixture
def api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def other_api(other_user) -> APIClient:
    client = APIClient()
    client.force_authenticate(other_user)
    return client
