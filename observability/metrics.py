"""The metrics that code records as things happen, and the calls that record them.

Most of what /metrics and the monitoring page show is read from rows the product keeps
anyway (firings, runs, steps, messages, agents: observability/selectors.py). What leaves
no row is counted here: HTTP requests, AI requests and tokens, failed calls to outside
services, integration health changes. A call costs a dictionary update in this process;
observability/recorder.py adds the counts to the database every few seconds.

This module imports no app (only the recorder), so every app may call it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from . import recorder

logger = logging.getLogger("observability")

PREFIX = "kommo_"  # of every name /metrics exposes

# seconds; an HTTP request, and an AI model's answer
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# seconds from a lead's message to the agent's reply (observability/selectors.py)
REPLY_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


@dataclass(frozen=True)
class Metric:
    """A recorded metric: its stored name, kind, help text and label names. A label named
    ``agent`` holds an agent's id, which scopes the monitoring page to the agent's owner."""

    name: str
    kind: Literal["counter", "histogram"]
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()

    @property
    def exposed_name(self) -> str:
        return PREFIX + self.name + ("_total" if self.kind == "counter" else "")


HTTP_REQUESTS = Metric(
    "http_requests",
    "counter",
    "HTTP requests answered, by URL name (view), method and status class (2xx, 4xx, 5xx…).",
    ("view", "method", "status_class"),
)
HTTP_DURATION = Metric(
    "http_request_duration_seconds",
    "histogram",
    "Time to answer an HTTP request, by URL name (view).",
    ("view",),
    HTTP_BUCKETS,
)
AI_REQUESTS = Metric(
    "ai_requests",
    "counter",
    "Requests to AI models, by provider, model, agent and outcome (success, rate_limited, transient_error, "
    "permanent_error, config_error).",
    ("provider", "model", "agent", "outcome"),
)
AI_TOKENS = Metric(
    "ai_tokens",
    "counter",
    "Tokens the AI models counted, by provider, model, agent and direction (input, output).",
    ("provider", "model", "agent", "direction"),
)
INTEGRATION_ERRORS = Metric(
    "integration_errors",
    "counter",
    "Calls to outside services (CRM, messengers, calendar) that failed for good, by integration type and "
    "error kind (auth, rate_limited, transient, permanent, not_found).",
    ("integration_type", "kind"),
)
INTEGRATION_STATUS_CHANGES = Metric(
    "integration_status_changes",
    "counter",
    "Integrations changing health, by integration type, new status and agent.",
    ("integration_type", "status", "agent"),
)

RECORDED = (HTTP_REQUESTS, HTTP_DURATION, AI_REQUESTS, AI_TOKENS, INTEGRATION_ERRORS, INTEGRATION_STATUS_CHANGES)


def count(metric: Metric, value: float = 1, **labels: str) -> None:
    """Add ``value`` to a counter."""
    recorder.default.count(metric.name, _labels(metric, labels), value)


def observe(metric: Metric, value: float, **labels: str) -> None:
    """Record one observation of a histogram."""
    recorder.default.observe(metric.name, _labels(metric, labels), value, metric.buckets)


def _labels(metric: Metric, labels: dict[str, str]) -> dict[str, str]:
    if set(labels) != set(metric.labels):
        raise ValueError(f"{metric.name} takes the labels {', '.join(metric.labels)}, got {', '.join(labels)}")
    return {name: "" if value is None else str(value) for name, value in labels.items()}


# --- what the rest of the code calls ---------------------------------------------------------


def status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status < 600 else "other"


def http_request(*, view: str, method: str, status: int, seconds: float) -> None:
    count(HTTP_REQUESTS, view=view, method=method, status_class=status_class(status))
    observe(HTTP_DURATION, seconds, view=view)


# The vendor names the clients use in messages → integration types (integrations/schemas.py).
VENDOR_TYPES = {
    "Kommo": "kommo",
    "Telegram": "telegram",
    "WhatsApp Cloud": "whatsapp_cloud",
    "Twilio": "twilio_whatsapp",
    "Google Calendar": "google_calendar",
}


def error_kind(error: Exception) -> str:
    """A short name for an outside service's typed error (integrations/errors.py)."""
    from integrations.errors import AuthError, NotFound, PermanentError, RateLimited, TransientError, Unconfirmed

    for cls, kind in (
        (NotFound, "not_found"),
        (AuthError, "auth"),
        (RateLimited, "rate_limited"),
        (TransientError, "transient"),
        (Unconfirmed, "unconfirmed"),
        (PermanentError, "permanent"),
    ):
        if isinstance(error, cls):
            return kind
    return "error"


def integration_call_failed(*, vendor: str, call: str, error: Exception, attempts: int) -> None:
    """One ``integration.call_failed`` line and one count for a call to an outside service
    that failed for good: its retries spent, or not worth retrying. Called by the clients'
    transports (crm/client.py, integrations/channels/base.py); ``call`` names the operation
    and holds no secret. A "not found" is often an expected answer (a lookup), hence INFO."""
    kind = error_kind(error)
    integration_type = VENDOR_TYPES.get(vendor, vendor.lower().replace(" ", "_"))
    logger.log(
        logging.INFO if kind == "not_found" else logging.WARNING,
        "integration.call_failed",
        extra={
            "integration_type": integration_type,
            "call": call,
            "kind": kind,
            "status": getattr(error, "status", None),
            "attempts": attempts,
            "error": str(error),
        },
    )
    count(INTEGRATION_ERRORS, integration_type=integration_type, kind=kind)
