"""Messenger channels: Telegram, WhatsApp Cloud API (Meta) and Twilio WhatsApp.

Each module has a client that sends and pure functions that check and parse the
channel's webhooks; what they share (the message dataclasses, text splitting, the
transport with its typed errors) is in ``base``.
"""
