"""API keys created and revoked with the CLI while the gateway runs."""

from __future__ import annotations

import json

import openai

from harness import Gateway, wait_until

# The test config refreshes keys every 200 ms, so 5 s leaves room for a slow CLI or database.
KEY_CHANGE_TIMEOUT_S = 5.0


def chat_status(gateway: Gateway, api_key: str) -> int | str:
    """Send a small chat request and return 200, or the error code of the API error."""
    try:
        gateway.client(api_key=api_key).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "ping"}]
        )
    except openai.APIStatusError as error:
        return error.code or error.status_code
    return 200


def test_new_key_accepted(gateway: Gateway) -> None:
    new_key = gateway.create_key()

    wait_until(lambda: chat_status(gateway, new_key) == 200, KEY_CHANGE_TIMEOUT_S, "the new key was not accepted")
    new_key_id = gateway.find_key_id(new_key)
    events = gateway.wait_for_events(1)

    assert new_key_id != gateway.key_id
    assert events[0]["key_id"] == new_key_id
    assert events[0]["project_id"] == gateway.project_id


def test_revoked_key_rejected(gateway: Gateway) -> None:
    assert chat_status(gateway, gateway.key) == 200

    gateway.cli("key", "revoke", gateway.key_id)

    wait_until(
        lambda: chat_status(gateway, gateway.key) == "invalid_api_key",
        KEY_CHANGE_TIMEOUT_S,
        "the revoked key was still accepted",
    )
    listed = [json.loads(line) for line in gateway.cli("key", "list", Gateway.PROJECT_NAME).stdout.splitlines() if line]
    revoked = next(entry for entry in listed if entry["id"] == gateway.key_id)
    assert revoked["revoked_at_ms"] is not None


def test_revoke_keeps_other_keys(gateway: Gateway) -> None:
    second_key = gateway.create_key()
    wait_until(lambda: chat_status(gateway, second_key) == 200, KEY_CHANGE_TIMEOUT_S, "the second key was not accepted")

    gateway.cli("key", "revoke", gateway.find_key_id(second_key))
    wait_until(
        lambda: chat_status(gateway, second_key) == "invalid_api_key",
        KEY_CHANGE_TIMEOUT_S,
        "the revoked key was still accepted",
    )

    assert chat_status(gateway, gateway.key) == 200


def test_revoke_unknown_key_fails(gateway: Gateway) -> None:
    completed = gateway.cli("key", "revoke", "key_0000000000000000", check=False)

    assert completed.returncode != 0
    assert "key_0000000000000000" in completed.stderr
