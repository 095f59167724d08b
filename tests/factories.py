"""Small builders for tests: make_user(), make_agent(owner=…), … with overridable fields."""
from __future__ import annotations

import itertools
from typing import Any

from django.contrib.auth import get_user_model

from agents.models import Agent, AgentCrmAccess, ExecutionLog
from integrations.models import Integration
from sequences.models import Sequence
from triggers.models import Trigger

_seq = itertools.count(1)

PASSWORD = "correct-horse-battery"


def make_user(**overrides: Any):
    n = next(_seq)
    fields = {"username": f"user{n}", "email": f"user{n}@example.com"} | overrides
    password = fields.pop("password", PASSWORD)
    user = get_user_model().objects.create_user(password=password, **fields)
    return user


def make_agent(owner=None, **overrides: Any) -> Agent:
    owner = owner or make_user()
    fields = {"name": f"Agent {next(_seq)}", "instructions": "Sell politely."} | overrides
    agent = Agent.objects.create(owner=owner, **fields)
    AgentCrmAccess.objects.create(agent=agent, lead_fields=[101, 102], contact_fields=[201])
    return agent


def make_trigger(agent=None, **overrides: Any) -> Trigger:
    fields = {
        "name": f"Trigger {next(_seq)}",
        "event": "lead_status_changed",
        "conditions": [{"field": "status", "operator": "equals", "value": {"status_id": 142}}],
        "actions": [{"type": "create_task", "text": "Call the lead", "due_in_minutes": 30}],
    } | overrides
    return Trigger.objects.create(agent=agent or make_agent(), **fields)


def make_sequence(agent=None, **overrides: Any) -> Sequence:
    fields = {
        "name": f"Sequence {next(_seq)}",
        "trigger_config": {"event": "lead_added", "conditions": []},
        "steps": [{"type": "delay", "days": 1}, {"type": "create_task", "text": "Follow up"}],
    } | overrides
    return Sequence.objects.create(agent=agent or make_agent(), **fields)


def make_integration(agent=None, **overrides: Any) -> Integration:
    fields = {
        "integration_type": "telegram",
        "config": {},
        "credentials": {"bot_token": "123456:SECRET-bot-token-value"},
    } | overrides
    return Integration.objects.create(agent=agent or make_agent(), **fields)


def make_log(agent=None, **overrides: Any) -> ExecutionLog:
    fields = {"kind": "trigger", "status": "success", "crm_lead_id": 123} | overrides
    return ExecutionLog.objects.create(agent=agent or make_agent(), **fields)
