"""Agents saved with the old "google:" provider name are moved to "gemini:" by a migration."""
from __future__ import annotations

import importlib

import pytest
from django.apps import apps

from agents.models import Agent
from tests.factories import make_agent

pytestmark = pytest.mark.django_db

migration = importlib.import_module("agents.migrations.0003_ai_model_gemini")


def test_google_models_become_gemini_models_and_others_are_left_alone():
    google = make_agent(ai_model="openai:placeholder")
    Agent.objects.filter(pk=google.pk).update(ai_model="google:gemini-2.5-flash")  # no longer valid to save
    other = make_agent(ai_model="openai:gpt-4o-mini")

    migration.google_to_gemini(apps, None)

    assert Agent.objects.get(pk=google.pk).ai_model == "gemini:gemini-2.5-flash"
    assert Agent.objects.get(pk=other.pk).ai_model == "openai:gpt-4o-mini"


def test_the_migration_can_be_reversed():
    agent = make_agent(ai_model="gemini:gemini-2.5-pro")

    migration.gemini_to_google(apps, None)

    assert Agent.objects.get(pk=agent.pk).ai_model == "google:gemini-2.5-pro"
