"""Encryption of stored credentials and `manage.py rotate_encryption_key`."""
from __future__ import annotations

import base64
from io import StringIO

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import override_settings

from integrations import crypto
from integrations.models import Integration
from tests.factories import make_agent, make_integration

T1 = "t1:" + base64.b64encode(b"A" * 32).decode()
T2 = "t2:" + base64.b64encode(b"B" * 32).decode()
T0 = "t0:" + base64.b64encode(b"0" * 32).decode()  # a key the settings do not know
CONTEXT = "integrations.integration.credentials"
SECRET = "123456:SECRET-bot-token-value"


def raw_credentials() -> dict[int, str]:
    table = connection.ops.quote_name(Integration._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT id, credentials FROM {table}")
        return dict(cursor.fetchall())


def rotate(*args: str) -> str:
    out = StringIO()
    call_command("rotate_encryption_key", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def rows_under_t1(db):
    agent = make_agent()
    with override_settings(ENCRYPTION_KEYS=[T1]):
        rows = [
            make_integration(agent=agent, credentials={"bot_token": f"{SECRET}-{n}", "n": str(n)}) for n in range(5)
        ]
    return {row.pk: {"bot_token": f"{SECRET}-{n}", "n": str(n)} for n, row in enumerate(rows)}


def test_test_settings_encrypt_with_t2_and_read_t1():
    assert [entry.split(":")[0] for entry in (T2, T1)] == ["t2", "t1"]
    assert crypto.keyring().current == "t2"


def test_rows_under_the_old_key_stay_readable_before_rotation(rows_under_t1):
    assert all(value.startswith("enc:v1:t1:") for value in raw_credentials().values())
    for pk, credentials in rows_under_t1.items():
        assert Integration.objects.get(pk=pk).credentials == credentials


def test_rotation_re_encrypts_every_row_with_the_newest_key(rows_under_t1):
    out = rotate("--batch-size", "2")

    raw = raw_credentials()
    assert set(raw) == set(rows_under_t1)
    assert all(value.startswith("enc:v1:t2:") for value in raw.values())
    assert not any(SECRET in value or "bot_token" in value for value in raw.values())
    for pk, credentials in rows_under_t1.items():
        assert Integration.objects.get(pk=pk).credentials == credentials
    assert "integrations.Integration.credentials: re-encrypted 5, already under key 't2' 0, total 5" in out


def test_after_rotation_the_old_key_can_be_removed(rows_under_t1):
    rotate()
    with override_settings(ENCRYPTION_KEYS=[T2]):
        assert {row.pk: row.credentials for row in Integration.objects.all()} == rows_under_t1


def test_without_rotation_removing_the_old_key_makes_rows_unreadable(rows_under_t1):
    with override_settings(ENCRYPTION_KEYS=[T2]), pytest.raises(crypto.DecryptionError, match="'t1'"):
        list(Integration.objects.all())


def test_rotation_skips_rows_already_under_the_newest_key(rows_under_t1):
    fresh = make_integration(credentials={"bot_token": "fresh"})
    before = raw_credentials()[fresh.pk]

    out = rotate()

    assert raw_credentials()[fresh.pk] == before  # not rewritten
    assert "re-encrypted 5, already under key 't2' 1, total 6" in out
    assert "re-encrypted 0, already under key 't2' 6, total 6" in rotate()


def test_dry_run_counts_and_changes_nothing(rows_under_t1):
    before = raw_credentials()
    out = rotate("--dry-run")
    assert raw_credentials() == before
    assert "would re-encrypt 5, already under key 't2' 0, total 5" in out


def test_a_row_under_an_unknown_key_stops_the_rotation_with_a_readable_error(rows_under_t1):
    with override_settings(ENCRYPTION_KEYS=[T0]):
        lost = make_integration(credentials={"bot_token": "lost"})
    before = raw_credentials()

    with pytest.raises(CommandError) as excinfo:
        rotate()

    message = str(excinfo.value)
    assert f"row id={lost.pk}" in message and "'t0'" in message and "ENCRYPTION_KEYS" in message
    assert "\n" not in message and "lost" not in message  # one line, no secret
    assert excinfo.value.returncode == 1  # manage.py exits with it
    assert raw_credentials() == before  # nothing rewritten, not even the readable rows


def test_a_damaged_value_stops_the_rotation_and_rolls_its_batch_back(rows_under_t1):
    damaged_pk = max(rows_under_t1)
    table = connection.ops.quote_name(Integration._meta.db_table)
    raw = raw_credentials()[damaged_pk]
    tampered = raw[:-6] + ("AAAAAA" if not raw.endswith("AAAAAA") else "BBBBBB")
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {table} SET credentials = %s WHERE id = %s", [tampered, damaged_pk])

    with pytest.raises(CommandError, match=rf"row id={damaged_pk} \(key 't1'\) cannot be decrypted"):
        rotate("--batch-size", "10")

    raw = raw_credentials()
    assert raw[damaged_pk] == tampered
    # the whole batch was rolled back: every other row is still the valid t1 ciphertext
    assert all(value.startswith("enc:v1:t1:") for value in raw.values())
    with override_settings(ENCRYPTION_KEYS=[T1]):
        for pk, credentials in rows_under_t1.items():
            if pk != damaged_pk:
                assert Integration.objects.get(pk=pk).credentials == credentials


def test_rotation_finds_every_encrypted_field():
    from integrations.fields import EncryptedJSONField
    from integrations.management.commands.rotate_encryption_key import encrypted_fields

    found = {(model._meta.label, field.name) for model, field in encrypted_fields()}
    assert ("integrations.Integration", "credentials") in found
    assert all(isinstance(field, EncryptedJSONField) for _, field in encrypted_fields())


def test_rotation_refuses_a_batch_size_below_one(db):
    with pytest.raises(CommandError, match="--batch-size"):
        rotate("--batch-size", "0")


# --- integrations.crypto -----------------------------------------------------------------


def test_ciphertext_round_trips_and_names_its_key():
    sealed = crypto.encrypt(b'{"token":"x"}', context=CONTEXT)
    assert sealed.startswith("enc:v1:t2:")
    assert crypto.key_id_of(sealed) == "t2"
    assert crypto.decrypt(sealed, context=CONTEXT) == b'{"token":"x"}'


def test_tampered_ciphertext_does_not_decrypt():
    sealed = crypto.encrypt(b"secret", context=CONTEXT)
    blob = bytearray(base64.urlsafe_b64decode(sealed.rsplit(":", 1)[1]))
    blob[15] ^= 1
    tampered = sealed.rsplit(":", 1)[0] + ":" + base64.urlsafe_b64encode(bytes(blob)).decode()

    with pytest.raises(crypto.DecryptionError, match="wrong key or damaged value"):
        crypto.decrypt(tampered, context=CONTEXT)


def test_ciphertext_relabelled_with_another_key_id_does_not_decrypt():
    sealed = crypto.encrypt(b"secret", context=CONTEXT)
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt(sealed.replace("enc:v1:t2:", "enc:v1:t1:"), context=CONTEXT)


def test_ciphertext_moved_to_another_column_does_not_decrypt():
    sealed = crypto.encrypt(b"secret", context=CONTEXT)
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt(sealed, context="integrations.integration.config")


def test_ciphertext_under_a_missing_key_names_the_key():
    with override_settings(ENCRYPTION_KEYS=[T0]):
        sealed = crypto.encrypt(b"secret", context=CONTEXT)
    with pytest.raises(crypto.DecryptionError, match=r"key 't0', which is not in ENCRYPTION_KEYS"):
        crypto.decrypt(sealed, context=CONTEXT)


def test_a_plain_value_is_not_taken_for_ciphertext():
    with pytest.raises(crypto.DecryptionError, match="not an encrypted value"):
        crypto.decrypt('{"bot_token": "x"}', context=CONTEXT)


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        (["no-separator"], "must look like 'id:base64key'"),
        (["bad id!:" + T1.split(":", 1)[1]], "must look like 'id:base64key'"),
        (["k1:***not base64***"], "key 'k1' is not valid base64"),
        (["k1:" + base64.b64encode(b"short").decode()], "key 'k1' must be 32 bytes (AES-256), got 5"),
        ([T1, T1], "key id 't1' is listed twice"),
    ],
)
def test_bad_encryption_keys_are_refused_with_a_readable_message(entries, message):
    with override_settings(ENCRYPTION_KEYS=entries), pytest.raises(ImproperlyConfigured) as excinfo:
        crypto.keyring()
    assert message in str(excinfo.value)
    assert T1.split(":", 1)[1] not in str(excinfo.value)  # the key material is never echoed

