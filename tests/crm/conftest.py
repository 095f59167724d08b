"""Fixtures shared by the CRM adapter's tests."""
from __future__ import annotations

import pytest

from tests.crm import recording_handlers as recording


@pytest.fixture
def recorded(settings):
    """Handlers that record their calls, instead of the configured ones."""
    settings.CRM_EVENT_HANDLERS = [recording.FIRST]
    recording.reset()
    yield recording.calls
    recording.reset()
