"""A JSON column stored encrypted (AES-256-GCM, see integrations/crypto.py)."""
from __future__ import annotations

import json
from typing import Any

from django.db import models

from . import crypto


class EncryptedJSONField(models.TextField):
    """Holds a JSON value in memory and ``enc:v1:<key id>:…`` in the database.

    Lookups other than isnull make no sense on ciphertext and are not offered.
    """

    description = "JSON encrypted with AES-256-GCM"

    def _context(self) -> str:
        return f"{self.model._meta.label_lower}.{self.name}"

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> Any:
        if value is None:
            return value
        return json.loads(crypto.decrypt(value, context=self._context()))

    def to_python(self, value: Any) -> Any:
        if isinstance(value, str) and crypto.is_ciphertext(value):
            return json.loads(crypto.decrypt(value, context=self._context()))
        return value

    def get_prep_value(self, value: Any) -> Any:
        if value is None:
            return None
        plaintext = json.dumps(value, separators=(",", ":"), sort_keys=True).encode()
        return crypto.encrypt(plaintext, context=self._context())

    def value_to_string(self, obj: models.Model) -> str:
        # dumpdata / serializers get the ciphertext, never the secret
        return self.get_prep_value(self.value_from_object(obj))

    def formfield(self, **kwargs: Any) -> None:  # edited through dedicated form fields only
        return None

    def get_lookup(self, lookup_name: str):
        if lookup_name != "isnull":
            return None
        return super().get_lookup(lookup_name)
