"""Demo data for a first look: a staff user "demo" with one agent, a trigger, a sequence
and a Telegram integration, created through the services like any other write.

A staff user manages its own agents in the admin without model permissions (agents/admin.py).
"""
from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from agents.models import Agent
from agents.services import agent_create
from integrations.models import Integration
from integrations.services import integration_create

DEMO_USERNAME = "demo"
DEMO_AGENT_NAME = "Demo sales agent"

WEEKDAY_HOURS = {day: [{"start": "09:00", "end": "18:00"}] for day in ("mon", "tue", "wed", "thu", "fri")}
AGENT_DATA = {
    "name": DEMO_AGENT_NAME,
    "instructions": (
        "You are Anna, a friendly sales manager of Demo Furniture. Answer briefly, find out what the "
        "lead needs (room, budget, delivery date), suggest one or two products and offer a call with "
        "a manager. Never invent prices or discounts."
    ),
    "default_language": "en",
    "language_detection": True,
    "schedule": {"timezone": "Europe/Moscow", "days": WEEKDAY_HOURS},
}
CRM_ACCESS = {"lead_fields": [100001, 100002], "contact_fields": [200001]}
TRIGGER_DATA = {
    "name": "Deal won: thank-you call",
    "event": "lead_status_changed",
    "conditions": [{"field": "status", "operator": "changed_to", "value": {"status_id": 142}}],
    "actions": [{"type": "create_task", "text": "Call the client to say thank you", "due_in_minutes": 60}],
}
SEQUENCE_NAME = "Follow-up after the first contact"
TELEGRAM_CREDENTIALS = {"bot_token": "demo-not-a-real-token"}


@dataclass
class SeedResult:
    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    password: str | None = None  # set when the demo user was created now
    password_generated: bool = False


@transaction.atomic
def seed_demo(*, password: str | None = None) -> SeedResult:
    """Create what is missing; never duplicates. ``password`` is set when given explicitly;
    otherwise DEMO_PASSWORD or a generated one is used for a new user only."""
    # triggers and sequences build on agents (shared/STYLE.md): imported here, not at the top
    from sequences.models import Sequence
    from sequences.services import sequence_create
    from triggers.models import Trigger
    from triggers.services import trigger_create

    result = SeedResult()
    User = get_user_model()

    user = User.objects.filter(username=DEMO_USERNAME).first()
    if user is None:
        result.password = password or os.environ.get("DEMO_PASSWORD") or secrets.token_urlsafe(12)
        result.password_generated = not (password or os.environ.get("DEMO_PASSWORD"))
        user = User.objects.create_user(
            username=DEMO_USERNAME, email="demo@example.com", password=result.password, is_staff=True
        )
        result.created.append(f"user {DEMO_USERNAME}")
    else:
        result.existing.append(f"user {DEMO_USERNAME}")
        if password:
            user.set_password(password)
            user.save(update_fields=["password"])
            result.password = password

    agent = Agent.objects.filter(owner=user, name=DEMO_AGENT_NAME).first()
    if agent is None:
        agent = agent_create(owner=user, data=AGENT_DATA, crm_access=CRM_ACCESS)
        result.created.append(f"agent {DEMO_AGENT_NAME!r}")
    else:
        result.existing.append(f"agent {DEMO_AGENT_NAME!r}")

    telegram = Integration.objects.filter(agent=agent, integration_type=Integration.Type.TELEGRAM).first()
    if telegram is None:
        telegram = integration_create(
            data={
                "agent": agent,
                "integration_type": Integration.Type.TELEGRAM,
                "config": {},
                "credentials": TELEGRAM_CREDENTIALS,
                # placeholder token: nothing should try to send through it until a real one is set
                "active": False,
            }
        )
        result.created.append("Telegram integration (placeholder token, inactive)")
    else:
        result.existing.append("Telegram integration")

    if not Trigger.objects.filter(agent=agent, name=TRIGGER_DATA["name"]).exists():
        trigger_create(data={"agent": agent, **TRIGGER_DATA})
        result.created.append(f"trigger {TRIGGER_DATA['name']!r}")
    else:
        result.existing.append(f"trigger {TRIGGER_DATA['name']!r}")

    if not Sequence.objects.filter(agent=agent, name=SEQUENCE_NAME).exists():
        sequence_create(
            data={
                "agent": agent,
                "name": SEQUENCE_NAME,
                "description": "A day after a new lead: a personal message written by the AI, then a task.",
                "trigger_config": {"event": "lead_added", "conditions": []},
                "steps": [
                    {"type": "delay", "days": 1, "working_hours_only": True},
                    {"type": "generate_message", "instruction": "Remind the lead of their request, ask one question."},
                    {"type": "send_message", "integration_id": telegram.id, "use_generated": True},
                    {"type": "create_task", "text": "Check whether the lead answered", "due_in_minutes": 240},
                ],
            }
        )
        result.created.append(f"sequence {SEQUENCE_NAME!r}")
    else:
        result.existing.append(f"sequence {SEQUENCE_NAME!r}")
    return result


class Command(BaseCommand):
    help = (
        "Create demo data: a staff user 'demo' (not a superuser) with an agent, a trigger, a sequence and a "
        "Telegram integration with a placeholder token. Safe to run again: creates only what is missing."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--password",
            help="the demo user's password (also resets an existing user's); default: DEMO_PASSWORD, else generated",
        )

    def handle(self, *args, password: str | None = None, **options):
        result = seed_demo(password=password)
        if result.created:
            self.stdout.write("Demo data created: " + ", ".join(result.created) + ".")
        if result.existing and not result.created:
            self.stdout.write("Demo data already present, nothing created.")
        elif result.existing:
            self.stdout.write("Already present: " + ", ".join(result.existing) + ".")
        if result.password_generated:
            self.stdout.write(f"Demo login: {DEMO_USERNAME} / {result.password}  (shown once)")
        elif result.password and password:
            self.stdout.write(f"Demo login: {DEMO_USERNAME}, password set from --password.")
