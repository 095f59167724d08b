"""Logging filters shared by every process.

Webhook URLs (the CRM, the messengers) carry the integration's secret key in their path, and request
logs (uvicorn's access log, Django's "Bad Request: /path") print paths: the key is
masked before any handler sees the record.
"""

from __future__ import annotations

import logging
import re

_WEBHOOK_KEY = re.compile(r"(/api/webhooks/[a-z]+/)[^/?#\s\"']+")


def mask_webhook_keys(text: str) -> str:
    return _WEBHOOK_KEY.sub(r"\1<key>", text)


class MaskWebhookKeys(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = mask_webhook_keys(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(mask_webhook_keys(a) if isinstance(a, str) else a for a in record.args)
        return True


# crm/intake.py writes a delivery's django-q2 task into the same statement as its events,
# through async_task with a stand-in broker whose enqueue answers this; django-q2 then logs
# "Enqueued [cluster] (in the webhook's statement)" for every delivery, next to the
# intake's own crm.webhook.accepted line. That duplicate is dropped here.
QUEUED_IN_STATEMENT = "(in the webhook's statement)"


class DropQueuedInStatement(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.endswith(QUEUED_IN_STATEMENT))
