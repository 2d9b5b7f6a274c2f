"""Projects' own provider keys (BYOK): routing with them, their management, and that the
plaintext key appears nowhere but in the request to the provider."""

from __future__ import annotations

import json
import secrets

import openai
import pytest

from harness import Gateway, admin_request, cli_with_input, http_request, wait_until

MASTER = "integration-master-secret-" + secrets.token_hex(8)
OTHER_MASTER = "a-different-master-secret-" + secrets.token_hex(8)
GLOBAL_KEY = "sk-global-" + secrets.token_hex(12)
ADMIN_TOKEN = "admin-token-" + secrets.token_hex(12)

CONFIG = {
    "providers": {"mock": {"api_key_env": "MOCK_GLOBAL_KEY"}},
    "provider_keys": {"refresh_interval_ms": 100},
    "health": {"enabled": False},
}


def environment(master: str = MASTER) -> dict[str, str]:
    return {"WATCHLLM_MASTER_KEY": master, "MOCK_GLOBAL_KEY": GLOBAL_KEY, "WATCHLLM_ADMIN_TOKEN": ADMIN_TOKEN}


def chat(gateway: Gateway, api_key: str | None = None, text: str = "hello there"):
    """Send one chat request and return (raw response, parsed completion)."""
    client = gateway.client(api_key)
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=[{"role": "user", "content": text}])
    return raw, raw.parse()


def set_key(gateway: Gateway, key: str, project: str = Gateway.PROJECT_NAME, master: str = MASTER) -> dict:
    output = cli_with_input(gateway, key + "\n", "provider-key", "set", project, "mock", environment={"WATCHLLM_MASTER_KEY": master})
    return json.loads(output.stdout)


def other_project_key(gateway: Gateway) -> str:
    gateway.cli("project", "create", "other")
    key = gateway.cli("key", "create", "other").stdout.strip()
    gateway.track(key)
    return key


def wait_for_key_source(gateway: Gateway, expected: str) -> None:
    """Wait until the gateway's refresh picked up a change of the project's provider key."""

    def matches() -> bool:
        raw, _ = chat(gateway)
        return raw.headers.get("x-watchllm-key-source") == expected

    wait_until(matches, 10.0, f"requests never reported key source {expected}", interval=0.2)


def database_bytes(gateway: Gateway) -> bytes:
    """Return the SQLite database with its WAL, or a dump of the PostgreSQL table."""
    if gateway.backend == "sqlite":
        return b"".join(path.read_bytes() for path in gateway.state_dir.glob("watchllm.db*"))
    from harness import psql

    assert gateway.database_name is not None
    return psql("SELECT encode(ciphertext, 'escape'), last_four FROM provider_keys", gateway.database_name).encode()


def test_byok_key_reaches_upstream(gateway_factory) -> None:
    gateway = gateway_factory(config_overrides=CONFIG, environment=environment())
    byok_key = "sk-byok-" + secrets.token_hex(16)
    gateway.track(byok_key, GLOBAL_KEY, MASTER)
    other_key = other_project_key(gateway)

    info = set_key(gateway, byok_key)
    assert info["key"] == "****" + byok_key[-4:]
    assert byok_key not in json.dumps(info)
    wait_for_key_source(gateway, "byok")

    raw, completion = chat(gateway)
    assert completion.choices[0].message.content
    assert raw.headers["x-watchllm-key-source"] == "byok"
    assert gateway.mock.last_request()["headers"]["authorization"] == f"Bearer {byok_key}"
    byok_request_id = raw.headers["x-watchllm-request-id"]

    raw, _ = chat(gateway, other_key)
    assert raw.headers["x-watchllm-key-source"] == "global"
    assert gateway.mock.last_request()["headers"]["authorization"] == f"Bearer {GLOBAL_KEY}"
    global_request_id = raw.headers["x-watchllm-request-id"]

    assert gateway.wait_for_event(byok_request_id)["key_source"] == "byok"
    assert gateway.wait_for_event(global_request_id)["key_source"] == "global"

    # The plaintext key is in no database file, listing, metric or log line.
    assert byok_key.encode() not in database_bytes(gateway)
    listed = gateway.cli("provider-key", "list").stdout
    assert byok_key not in listed
    assert ("****" + byok_key[-4:]) in listed
    metrics = http_request(gateway.admin_url + "/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert metrics.status == 200
    assert byok_key.encode() not in metrics.body
    assert byok_key not in gateway.stderr_text()


def test_deleted_key_falls_back_to_global(gateway_factory) -> None:
    gateway = gateway_factory(config_overrides=CONFIG, environment=environment())
    byok_key = "sk-byok-" + secrets.token_hex(16)
    gateway.track(byok_key, GLOBAL_KEY)
    set_key(gateway, byok_key)
    wait_for_key_source(gateway, "byok")

    gateway.cli("provider-key", "delete", Gateway.PROJECT_NAME, "mock")
    assert gateway.cli("provider-key", "list").stdout.strip() == ""
    wait_for_key_source(gateway, "global")
    assert gateway.mock.last_request()["headers"]["authorization"] == f"Bearer {GLOBAL_KEY}"
    missing = gateway.cli("provider-key", "delete", Gateway.PROJECT_NAME, "mock", check=False)
    assert missing.returncode != 0


def test_undecryptable_key_fails_request(gateway_factory) -> None:
    gateway = gateway_factory(config_overrides=CONFIG, environment=environment(master=OTHER_MASTER), start=False)
    byok_key = "sk-byok-" + secrets.token_hex(16)
    gateway.track(byok_key, GLOBAL_KEY, MASTER, OTHER_MASTER)
    set_key(gateway, byok_key, master=MASTER)
    gateway.start()
    before = gateway.mock.request_count()

    response = gateway.post("/chat/completions", json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode())
    assert response.status == 500
    assert response.json()["error"]["code"] == "provider_key_unavailable"
    assert byok_key.encode() not in response.body
    # No silent fallback: the global key never went out for this project.
    assert gateway.mock.request_count() == before
    log = gateway.stderr_text()
    assert "cannot use the project's own provider key" in log
    assert "authentication failed" in log
    assert byok_key not in log


def test_rotate_master_keeps_keys_usable(gateway_factory) -> None:
    gateway = gateway_factory(config_overrides=CONFIG, environment=environment(), start=False)
    byok_key = "sk-byok-" + secrets.token_hex(16)
    new_master = "rotated-master-secret-" + secrets.token_hex(8)
    gateway.track(byok_key, MASTER, new_master)
    set_key(gateway, byok_key)

    wrong = cli_with_input(gateway, new_master, "provider-key", "rotate-master", environment={"WATCHLLM_MASTER_KEY": OTHER_MASTER}, check=False)
    assert wrong.returncode != 0
    assert "nothing was changed" in wrong.stderr
    rotated = cli_with_input(gateway, new_master + "\n", "provider-key", "rotate-master")
    assert "then restart the gateways" in rotated.stderr

    gateway.extra_environment["WATCHLLM_MASTER_KEY"] = new_master
    gateway.start()
    raw, _ = chat(gateway)
    assert raw.headers["x-watchllm-key-source"] == "byok"
    assert gateway.mock.last_request()["headers"]["authorization"] == f"Bearer {byok_key}"
    listed = [json.loads(line) for line in gateway.cli("provider-key", "list").stdout.splitlines()]
    assert listed[0]["key_version"] == 2
    assert listed[0]["rotated_at_ms"] is not None


def test_rotation_follows_secret_file(gateway_factory, tmp_path) -> None:
    """A running gateway follows a rotation made by another process once the secret file changes."""
    secret_file = tmp_path / "master.key"
    secret_file.write_text(MASTER + "\n")
    config = {**CONFIG, "provider_keys": {"refresh_interval_ms": 100, "master_key_file": str(secret_file)}}
    gateway = gateway_factory(config_overrides=config, environment=environment(OTHER_MASTER))
    byok_key = "sk-byok-" + secrets.token_hex(16)
    new_master = "file-rotated-master-" + secrets.token_hex(8)
    gateway.track(byok_key, MASTER, new_master, OTHER_MASTER)
    set_key(gateway, byok_key, master=OTHER_MASTER)  # the file wins over the variable
    wait_for_key_source(gateway, "byok")

    new_file = tmp_path / "new-master.key"
    new_file.write_text(new_master + "\n")
    rotated = gateway.cli("provider-key", "rotate-master", "--new-secret-file", str(new_file))
    assert "running gateways read it from there" in rotated.stderr
    new_file.replace(secret_file)

    def serves_own_key() -> bool:
        client = gateway.client()
        try:
            raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "after rotation"}])
        except openai.InternalServerError:  # provider_key_unavailable until the new secret is read
            return False
        return raw.headers.get("x-watchllm-key-source") == "byok"

    wait_until(serves_own_key, 10.0, "the gateway never decrypted the rotated key with the new secret file")
    assert gateway.mock.last_request()["headers"]["authorization"] == f"Bearer {byok_key}"
    # The routing service's thread writes this line, not the request, so the check polls. A
    # refresh that ran between the CLI's commit and the file's replacement loaded the records
    # first, and then the new secret comes in a line of its own.
    def reported_new_master() -> bool:
        log = gateway.stderr_text()
        return "master_secret_changed=true" in log or "master secret changed;" in log

    wait_until(reported_new_master, 5.0, "the log never reported the new master secret")
    log = gateway.stderr_text()
    for secret in (byok_key, MASTER, new_master):
        assert secret not in log


def test_admin_provider_key_routes(gateway_factory) -> None:
    gateway = gateway_factory(config_overrides=CONFIG, environment=environment())
    byok_key = "sk-byok-" + secrets.token_hex(16)
    gateway.track(byok_key)
    path = f"/admin/provider-keys/{Gateway.PROJECT_NAME}/mock"

    unauthorized = http_request(gateway.admin_url + path, "PUT", json.dumps({"key": byok_key}).encode(), {"Content-Type": "application/json"})
    assert unauthorized.status == 401
    created = admin_request(gateway, "PUT", path, ADMIN_TOKEN, {"key": byok_key})
    assert created.status == 200, created.body
    assert created.json()["key"] == "****" + byok_key[-4:]
    assert byok_key.encode() not in created.body
    unknown = admin_request(gateway, "PUT", f"/admin/provider-keys/{Gateway.PROJECT_NAME}/nowhere", ADMIN_TOKEN, {"key": byok_key})
    assert unknown.status == 400
    assert byok_key.encode() not in unknown.body

    listed = admin_request(gateway, "GET", "/admin/provider-keys", ADMIN_TOKEN)
    assert listed.status == 200
    assert [entry["provider"] for entry in listed.json()["data"]] == ["mock"]
    assert byok_key.encode() not in listed.body
    wait_for_key_source(gateway, "byok")

    new_master = "rotated-through-admin-" + secrets.token_hex(8)
    gateway.track(new_master)
    short = admin_request(gateway, "POST", "/admin/provider-keys/rotate-master", ADMIN_TOKEN, {"new_master_secret": "short"})
    assert short.status == 400
    rotated = admin_request(gateway, "POST", "/admin/provider-keys/rotate-master", ADMIN_TOKEN, {"new_master_secret": new_master})
    assert rotated.status == 200, rotated.body
    assert rotated.json()["reencrypted"] == 1
    assert new_master.encode() not in rotated.body
    listed = admin_request(gateway, "GET", "/admin/provider-keys", ADMIN_TOKEN).json()["data"]
    assert listed[0]["key_version"] == 2
    raw, _ = chat(gateway)
    assert raw.headers["x-watchllm-key-source"] == "byok"
    assert gateway.mock.last_request()["headers"]["authorization"] == f"Bearer {byok_key}"

    deleted = admin_request(gateway, "DELETE", path, ADMIN_TOKEN)
    assert deleted.status == 200
    assert admin_request(gateway, "DELETE", path, ADMIN_TOKEN).status == 404
    wait_for_key_source(gateway, "global")


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_missing_master_secret_rejects_set(gateway_factory) -> None:
    gateway = gateway_factory(config_overrides=CONFIG, environment={"MOCK_GLOBAL_KEY": GLOBAL_KEY}, start=False)
    result = cli_with_input(gateway, "sk-whatever-1234", "provider-key", "set", Gateway.PROJECT_NAME, "mock", check=False)
    assert result.returncode != 0
    assert "no master secret is configured" in result.stderr
