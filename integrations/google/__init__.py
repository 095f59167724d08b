"""Google Calendar: connecting an agent's Google account (OAuth web-server flow with PKCE),
its calendars, availability and event creation. See calendar.py for the operations."""
