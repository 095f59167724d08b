"""What the configured console handler writes (config/settings/base.py LOGGING), for tests
that check the real lines: its filter, its formatter."""
from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager


def console_handler() -> logging.Handler:
    return next(h for h in logging.getLogger().handlers if h.get_name() == "console")


@contextmanager
def console_output() -> Iterator[io.StringIO]:
    """The console handler writes into the yielded buffer meanwhile."""
    handler = console_handler()
    buffer = io.StringIO()
    previous = handler.setStream(buffer)
    try:
        yield buffer
    finally:
        handler.setStream(previous)
