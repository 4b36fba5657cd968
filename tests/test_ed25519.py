"""Standard Webhooks v1a signatures (ed25519) end to end: what a receiver gets is checked with an
independent ed25519 implementation (Python's cryptography) and the public key billhook shows, and v1
with the standardwebhooks library, including the registration check and a key rotation."""

import base64
import json

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from psycopg import errors
from standardwebhooks.webhooks import Webhook

from helpers import customer


def signatures(push, version):
    """The base64 signatures of one version in a push's webhook-signature header."""
    return [part.split(",", 1)[1] for part in push.headers["webhook-signature"].split(" ")
            if part.split(",", 1)[0] == version]


def verifies(public_key, push, signature, body=None):
    """Whether `signature` is public_key's ed25519 signature of "webhook-id.webhook-timestamp.body"."""
    key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key.removeprefix("whpk_")))
    message = f"{push.headers['webhook-id']}.{push.headers['webhook-timestamp']}.".encode() + (body or push.body)
    try:
        key.verify(base64.b64decode(signature), message)
        return True
    except InvalidSignature:
        return False


def create(db, admin, url, signature, verify=False):
    return db.execute("SELECT id, signing_secret FROM billhook.create_webhook(%s, '{customer.created}', %s,"
                      " verify => %s, signature => %s)", (url, admin, verify, signature)).fetchone()


def public_keys(db, hook):
    """What webhook_overview, which leaves out every secret, shows a receiver's operator."""
    return db.execute("SELECT public_key, previous_public_key FROM billhook.webhook_overview WHERE id = %s",
                      (hook,)).fetchone()


def test_an_ed25519_webhook_signs_with_v1a_only_and_the_public_key_verifies(worker_db, worker_admin, receiver):
    hook, _ = create(worker_db, worker_admin, receiver.url("/ed25519"), "ed25519")
    customer(worker_db, worker_admin)
    [push] = receiver.wait_for("/ed25519", 1)
    public_key, previous = public_keys(worker_db, hook)
    assert public_key.startswith("whpk_") and previous is None
    assert signatures(push, "v1") == []
    [signature] = signatures(push, "v1a")
    assert verifies(public_key, push, signature)
    assert not verifies(public_key, push, signature, body=push.body.replace(b"customer", b"Customer")), \
        "a forged body fails"
    other_hook, _ = create(worker_db, worker_admin, receiver.url("/ed25519-other"), "ed25519")
    assert not verifies(public_keys(worker_db, other_hook)[0], push, signature), "another webhook's key fails"


def test_both_sign_with_v1_and_v1a_and_each_verifies_with_its_own_library(worker_db, worker_admin, receiver):
    hook, secret = create(worker_db, worker_admin, receiver.url("/both"), "both")
    c = customer(worker_db, worker_admin)
    [push] = receiver.wait_for("/both", 1)
    assert Webhook(secret).verify(push.body, dict(push.headers))["entity_id"] == str(c)
    [signature] = signatures(push, "v1a")
    assert verifies(public_keys(worker_db, hook)[0], push, signature)


def test_a_rotated_key_signs_beside_the_new_one_until_its_grace_ends(worker_db, worker_admin, receiver):
    hook, secret = create(worker_db, worker_admin, receiver.url("/rotated"), "both")
    old_public = public_keys(worker_db, hook)[0]
    worker_db.execute("SELECT billhook.rotate_signing_key(%s, '1 hour')", (hook,))
    new_public, previous = public_keys(worker_db, hook)
    assert previous == old_public and new_public != old_public
    customer(worker_db, worker_admin)
    [push] = receiver.wait_for("/rotated", 1)
    new, old = signatures(push, "v1a")
    assert verifies(new_public, push, new) and verifies(old_public, push, old)
    assert Webhook(secret).verify(push.body, dict(push.headers)), "the HMAC secret is not rotated with it"
    # No grace: the old key stops at once.
    worker_db.execute("SELECT billhook.rotate_signing_key(%s, '0 seconds')", (hook,))
    newest = public_keys(worker_db, hook)[0]
    customer(worker_db, worker_admin)
    second = receiver.wait_for("/rotated", 2)[1]
    [only] = signatures(second, "v1a")
    assert verifies(newest, second, only)
    with pytest.raises(errors.InvalidParameterValue):
        worker_db.execute("SELECT billhook.rotate_signing_key(%s, '-1 hour')", (hook,))


def test_the_registration_check_of_an_ed25519_webhook_is_signed_with_v1a(worker_db, worker_admin, receiver):
    hook, _ = create(worker_db, worker_admin, receiver.url("/ed25519-check"), "ed25519", verify=True)
    [check] = receiver.received("/ed25519-check")
    assert json.loads(check.body)["action"] == "webhook.verification"
    assert signatures(check, "v1") == []
    [signature] = signatures(check, "v1a")
    assert verifies(public_keys(worker_db, hook)[0], check, signature)


def test_the_private_key_is_as_protected_as_the_secret_and_bad_choices_are_22023(cluster, worker_db, worker_admin):
    worker_db.execute("SELECT billhook.create_roles()")
    worker_db.execute("DROP ROLE IF EXISTS ed25519_reader")
    worker_db.execute("CREATE ROLE ed25519_reader LOGIN IN ROLE billhook_reader")
    try:
        hook, _ = create(worker_db, worker_admin, "https://receiver.example/keys", "ed25519")
        with cluster.connect("billhook_worker", user="ed25519_reader") as reader:
            assert reader.execute("SELECT public_key FROM billhook.webhooks WHERE id = %s",
                                  (hook,)).fetchone()[0].startswith("whpk_")
            for secret in ("signing_key", "previous_signing_key", "signing_secret"):
                with pytest.raises(errors.InsufficientPrivilege):
                    reader.execute(f"SELECT {secret} FROM billhook.webhooks WHERE id = %s", (hook,))
    finally:
        worker_db.execute("DROP ROLE ed25519_reader")
    with pytest.raises(errors.InvalidParameterValue) as raised:
        worker_db.execute("SELECT billhook.update_webhook(%s, signature => 'rsa')", (hook,))
    assert raised.value.diag.message_primary == 'invalid signature "rsa": no such choice'
    assert raised.value.diag.message_hint == "Use one of: hmac, ed25519, both."
    with pytest.raises(errors.InvalidParameterValue) as raised:
        worker_db.execute("UPDATE billhook.webhooks SET signing_key = 'whsk_AAEC' WHERE id = %s", (hook,))
    assert raised.value.diag.message_primary == "invalid signing key: not an ed25519 key"
    assert "AAEC" not in raised.value.diag.message_primary
