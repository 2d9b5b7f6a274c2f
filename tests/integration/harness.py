"""Processes, databases and HTTP helpers for the WatchLLM integration tests.

The tests run the real `watchllm` binary: one mock upstream per session and one gateway per
test, each on 127.0.0.1 with a port that the operating system picked. Every wait in this module
polls with a deadline, so a hung process fails a test instead of hanging the suite.
"""

from __future__ import annotations

import contextlib
import copy
import http.client
import json
import os
import secrets
import select
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import openai
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
PRICING_SOURCE = REPO_ROOT / "conf" / "pricing.yaml"
LOOPBACK = "127.0.0.1"

# PostgreSQL server of the test environment: trust authentication, so no password. The
# maintenance database only runs CREATE DATABASE and DROP DATABASE for the tests' own databases.
POSTGRES_URL_PREFIX = f"postgres://postgres@{LOOPBACK}:5432"
POSTGRES_MAINTENANCE_DB = "test"

# Models that every test gateway routes to the mock provider. Each one has a price in
# conf/pricing.yaml and no upstream_model, so the gateway forwards the name unchanged.
MODELS = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small")

# Tokens that the mock adds to each chat message for its role and separators.
MOCK_TOKENS_PER_MESSAGE = 4

STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
CLI_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.05


def binary_path() -> Path:
    """Return the watchllm binary: $WATCHLLM_BIN, else the release build of this repository."""
    override = os.environ.get("WATCHLLM_BIN")
    path = Path(override) if override else REPO_ROOT / "target" / "release" / "watchllm"
    if not path.is_file() or not os.access(path, os.X_OK):
        raise RuntimeError(
            f"watchllm binary not found or not executable at {path}; "
            "run `cargo build --release` or set WATCHLLM_BIN"
        )
    return path


_ISSUED_PORTS: set[int] = set()


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that the operating system reported free.

    The probe socket is closed before the caller binds, so the kernel may offer
    the same port twice. Ports already handed out in this process are skipped,
    which keeps a gateway's listen and admin ports apart.
    """
    for _ in range(64):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((LOOPBACK, 0))
            port = probe.getsockname()[1]
        if port not in _ISSUED_PORTS:
            _ISSUED_PORTS.add(port)
            return port
    raise RuntimeError("no unused loopback port found after 64 probes")


def port_accepts(port: int) -> bool:
    """Return True when a TCP connection to 127.0.0.1:`port` succeeds."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1.0):
            return True
    except OSError:
        return False


def base_environment() -> dict[str, str]:
    """Return this process's environment without WATCHLLM_* and OPENAI_* variables.

    The gateway reads WATCHLLM_* overrides and the SDK reads OPENAI_*, so inherited values
    would change what a test runs against.
    """
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("WATCHLLM_", "OPENAI_"))
    }


def wait_until(condition: Callable[[], Any], timeout: float, message: str, interval: float = POLL_INTERVAL_S) -> Any:
    """Call `condition` until it returns a truthy value and return that value.

    Raises AssertionError with `message` when `timeout` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s: {message}")
        time.sleep(interval)


def word_count(text: str) -> int:
    """Count whitespace-separated words, the mock's unit of a token."""
    return len(text.split())


def mock_chat_prompt_tokens(messages: list[dict[str, str]]) -> int:
    """Return the prompt tokens that the mock reports for chat `messages` with string contents."""
    return sum(word_count(message["content"]) + MOCK_TOKENS_PER_MESSAGE for message in messages)


def unique_text(label: str) -> str:
    """Return `label` followed by a random word, so a test can find its own text in logs."""
    return f"{label} marker{secrets.token_hex(6)}"


def find_leaks(log: str, secrets_to_find: list[str]) -> list[str]:
    """Return one description per secret found in `log`: its start and the log line around it."""
    leaks = []
    for secret in secrets_to_find:
        position = log.find(secret)
        if position < 0:
            continue
        line_start = log.rfind("\n", 0, position) + 1
        line_end = log.find("\n", position)
        line = log[line_start:line_end if line_end >= 0 else len(log)]
        leaks.append(f"{secret[:16]}... in log line: {line[:300]}")
    return leaks


# ---------------------------------------------------------------------------------------------
# Plain HTTP, for requests that the OpenAI SDK cannot send (raw bytes, gzip, x-api-key).


@dataclass
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http_request(
    url: str,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> HttpResponse:
    """Send one HTTP/1.1 request to a loopback URL and read the whole response."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname != LOOPBACK:
        raise ValueError(f"tests send traffic only to {LOOPBACK}, not to {url}")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query

    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        data = response.read()
        response_headers = {name.lower(): value for name, value in response.getheaders()}
        return HttpResponse(response.status, response_headers, data)
    finally:
        connection.close()


def sdk_client(base_url: str, api_key: str, **options: Any) -> openai.OpenAI:
    """Build an OpenAI SDK client for the gateway: no retries and no proxy from the environment."""
    options.setdefault("timeout", 30.0)
    return openai.OpenAI(
        base_url=base_url,
        api_key=api_key,
        max_retries=0,
        http_client=openai.DefaultHttpxClient(trust_env=False),
        **options,
    )


# ---------------------------------------------------------------------------------------------
# Pricing.


class Pricing:
    """Model prices in USD per million tokens, read from a pricing file."""

    def __init__(self, path: Path):
        self.models: dict[str, dict[str, float]] = yaml.safe_load(path.read_text())["models"]

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
        """Compute ((prompt - cached) * input + cached * cached_input + completion * output) / 1e6."""
        price = self.models[model]
        cached_rate = price.get("cached_input", price["input"])
        uncached = prompt_tokens - cached_tokens
        return (uncached * price["input"] + cached_tokens * cached_rate + completion_tokens * price["output"]) / 1e6


# ---------------------------------------------------------------------------------------------
# The mock upstream.


class MockUpstream:
    """A `watchllm mock-upstream` process and its introspection routes."""

    def __init__(self, binary: Path, log_dir: Path):
        self.binary = binary
        self.log_path = log_dir / "mock-upstream.stderr"
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.root = ""

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [str(self.binary), "mock-upstream", "--listen", f"{LOOPBACK}:0"],
            stdout=subprocess.PIPE,
            stderr=log,
            env=base_environment(),
        )
        log.close()
        line = self._read_first_line(STARTUP_TIMEOUT_S)
        prefix = "mock upstream listening on "
        if not line.startswith(prefix):
            self.stop()
            raise RuntimeError(f"unexpected first line from mock-upstream: {line!r}")
        self.url = line[len(prefix):].strip()
        self.root = self.url.removesuffix("/v1")
        if urllib.parse.urlsplit(self.url).hostname != LOOPBACK:
            self.stop()
            raise RuntimeError(f"mock upstream listens outside loopback: {self.url}")

    def _read_first_line(self, timeout: float) -> str:
        assert self.process is not None and self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            raise RuntimeError(f"mock-upstream printed nothing within {timeout} s; see {self.log_path}")
        line = self.process.stdout.readline().decode("utf-8", "replace")
        if not line:
            raise RuntimeError(f"mock-upstream exited with {self.process.wait(5)}; see {self.log_path}")
        return line

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT_S)

    def last_request(self) -> dict[str, Any]:
        """Return the mock's record of its latest POST: path, headers, body_sha256, body_len, body."""
        response = http_request(self.root + "/mock/last-request")
        assert response.status == 200, response.body
        return response.json()

    def request_count(self) -> int:
        response = http_request(self.root + "/mock/requests")
        assert response.status == 200, response.body
        return response.json()["count"]


# ---------------------------------------------------------------------------------------------
# PostgreSQL, through psql against the tests' own databases.


def psql(sql: str, database: str = POSTGRES_MAINTENANCE_DB) -> str:
    """Run SQL with psql and return its unaligned output. Raises on any SQL error."""
    environment = base_environment()
    environment["PGCONNECT_TIMEOUT"] = "5"
    completed = subprocess.run(
        ["psql", "-h", LOOPBACK, "-p", "5432", "-U", "postgres", "-d", database,
         "-v", "ON_ERROR_STOP=1", "-X", "-A", "-t", "-c", sql],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        env=environment,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"psql failed with exit code {completed.returncode}: {completed.stderr.strip()}")
    return completed.stdout


def create_postgres_database() -> str:
    name = f"wl_{secrets.token_hex(6)}"
    psql(f"CREATE DATABASE {name}")
    return name


def drop_postgres_database(name: str) -> None:
    # WITH (FORCE) ends the database's sessions first (PostgreSQL 13 and later).
    psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def block_postgres_database(name: str) -> None:
    """Refuse new connections to database `name` and end its current sessions."""
    psql(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
    psql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"
    )


def unblock_postgres_database(name: str) -> None:
    psql(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")


# ---------------------------------------------------------------------------------------------
# The gateway.


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Return `base` with `overrides` merged in, recursing into nested mappings."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


class Gateway:
    """One `watchllm serve` process with its own config, state directory and database.

    `config_overrides` is merged into the generated watchllm.yaml. `environment` adds variables
    to the gateway's environment, such as a provider key or WATCHLLM_LOG.
    """

    PROJECT_NAME = "integration"

    def __init__(
        self,
        binary: Path,
        workdir: Path,
        backend: str,
        mock: MockUpstream,
        stderr_path: Path,
        config_overrides: dict[str, Any] | None = None,
        environment: dict[str, str] | None = None,
    ):
        self.binary = binary
        self.workdir = workdir
        self.backend = backend
        self.mock = mock
        self.stderr_path = stderr_path
        self.config_overrides = config_overrides or {}
        self.extra_environment = environment or {}

        self.config_dir = workdir / "conf"
        self.config_path = self.config_dir / "watchllm.yaml"
        self.state_dir = workdir / "state"
        self.journal_dir = self.state_dir / "journal"
        self.pricing = Pricing(PRICING_SOURCE)

        self.database_name: str | None = None
        self.database_url = ""
        self.listen_port = 0
        self.admin_port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.project_id = ""
        self.key = ""
        self.key_id = ""
        # Keys, prompts and completions that must never appear in the gateway's stderr.
        self.secrets: list[str] = []

    # --- set-up -----------------------------------------------------------------------------

    def prepare(self) -> None:
        """Write the config, create the database, the project and the first key."""
        self.config_dir.mkdir(parents=True)
        self.state_dir.mkdir(parents=True)
        shutil.copyfile(PRICING_SOURCE, self.config_dir / "pricing.yaml")
        self.pricing = Pricing(self.config_dir / "pricing.yaml")
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))

        if self.backend == "sqlite":
            self.database_url = ""
        elif self.backend == "postgres":
            self.database_name = create_postgres_database()
            self.database_url = f"{POSTGRES_URL_PREFIX}/{self.database_name}"
        else:
            raise ValueError(f"unknown backend {self.backend!r}")

        self.listen_port = free_port()
        self.admin_port = free_port()
        project = json.loads(self.cli("project", "create", self.PROJECT_NAME, "--plan", "pro").stdout)
        self.project_id = project["id"]
        self.key = self.create_key()
        self.key_id = self.find_key_id(self.key)

    def config(self) -> dict[str, Any]:
        base = {
            "threads": 1,
            "pricing_file": "pricing.yaml",
            "shutdown_grace_seconds": 5,
            "auth": {"refresh_interval_ms": 200},
            "accounting": {"flush_interval_ms": 50, "replay_interval_ms": 200},
            "providers": {"mock": {"base_url": self.mock.url}},
            "models": {name: {"provider": "mock"} for name in MODELS},
        }
        return deep_merge(base, self.config_overrides)

    def environment(self) -> dict[str, str]:
        environment = base_environment()
        environment.update(
            {
                "WATCHLLM_LISTEN": f"{LOOPBACK}:{self.listen_port}",
                "WATCHLLM_ADMIN_LISTEN": f"{LOOPBACK}:{self.admin_port}",
                "WATCHLLM_STATE_DIR": str(self.state_dir),
                "WATCHLLM_DATABASE_URL": self.database_url,
            }
        )
        environment.update(self.extra_environment)
        return environment

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.listen_port}/v1"

    @property
    def admin_url(self) -> str:
        return f"http://{LOOPBACK}:{self.admin_port}"

    @property
    def sqlite_path(self) -> Path:
        return self.state_dir / "watchllm.db"

    # --- the process ------------------------------------------------------------------------

    def start(self, timeout: float = STARTUP_TIMEOUT_S) -> None:
        """Start `watchllm serve` and wait until it serves /health and accepts proxy connections."""
        self.spawn()
        self.wait_healthy(timeout)

    def spawn(self) -> None:
        """Start `watchllm serve` without waiting for it."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("the gateway is already running")
        stderr = open(self.stderr_path, "ab")
        self.process = subprocess.Popen(
            [str(self.binary), "serve", "--config", str(self.config_path)],
            stdout=stderr,
            stderr=stderr,
            env=self.environment(),
            cwd=self.workdir,
        )
        stderr.close()

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the gateway exited with code {self.process.returncode} during start-up:\n"
                    + self.stderr_tail()
                )
            with contextlib.suppress(OSError, http.client.HTTPException):
                response = http_request(self.admin_url + "/health", timeout=2.0)
                if response.status == 200 and response.json().get("status") == "ok":
                    break
            time.sleep(POLL_INTERVAL_S)
        else:
            raise RuntimeError(f"GET /health did not return status ok within {timeout} s:\n" + self.stderr_tail())

        # NOTE: /health can return ok before the proxy listener accepts connections, because
        # the admin service starts first, so start-up also waits for the proxy port.
        while time.monotonic() < deadline:
            if port_accepts(self.listen_port):
                return
            time.sleep(POLL_INTERVAL_S)
        raise RuntimeError(f"the proxy port {self.listen_port} accepted no connection within {timeout} s:\n" + self.stderr_tail())

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """Send SIGTERM and wait for the exit. Sends SIGKILL when the gateway outlives `timeout`.

        Returns the exit code after SIGTERM, or None when SIGKILL was needed.
        """
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)
            return None

    def kill(self) -> None:
        """Stop the gateway with SIGKILL, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT_S)

    def restart(self) -> None:
        """Stop the gateway if it runs and start it again on the same ports and state."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the gateway and drop its PostgreSQL database."""
        try:
            self.stop()
        finally:
            if self.database_name is not None:
                with contextlib.suppress(RuntimeError):
                    unblock_postgres_database(self.database_name)
                drop_postgres_database(self.database_name)
                self.database_name = None

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def stderr_tail(self, lines: int = 40) -> str:
        return "\n".join(self.stderr_text().splitlines()[-lines:])

    # --- management commands ----------------------------------------------------------------

    def cli(self, *arguments: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a watchllm management command against this gateway's config and database."""
        completed = subprocess.run(
            [str(self.binary), *arguments, "--config", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_S,
            env=self.environment(),
            cwd=self.workdir,
        )
        if check and completed.returncode != 0:
            raise RuntimeError(
                f"watchllm {' '.join(arguments)} failed with exit code {completed.returncode}:\n{completed.stderr}"
            )
        return completed

    def create_key(self) -> str:
        key = self.cli("key", "create", self.PROJECT_NAME).stdout.strip()
        assert key.startswith("wllm_"), f"unexpected key format: {key[:8]}..."
        self.secrets.append(key)
        return key

    def find_key_id(self, key: str) -> str:
        """Return the id of `key`, found by its display prefix in `key list`."""
        listed = [json.loads(line) for line in self.cli("key", "list", self.PROJECT_NAME).stdout.splitlines() if line]
        matches = [entry["id"] for entry in listed if key.startswith(entry["prefix"])]
        assert len(matches) == 1, f"expected one key with the prefix of the new key, found {len(matches)}"
        return matches[0]

    def usage_events(self, limit: int = 1000) -> list[dict[str, Any]]:
        """Return the stored usage events, newest first, from `watchllm usage list`."""
        output = self.cli("usage", "list", "--limit", str(limit)).stdout
        return [json.loads(line) for line in output.splitlines() if line.strip()]

    def wait_for_events(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Poll `usage list` until at least `count` events are stored, and return them all."""
        found: list[dict[str, Any]] = []

        def enough() -> bool:
            nonlocal found
            found = self.usage_events()
            return len(found) >= count

        wait_until(enough, timeout, f"expected {count} usage events, found {len(found)}", interval=0.1)
        return found

    def wait_for_event(self, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """Poll `usage list` until the event of `request_id` is stored, and return it."""

        def lookup() -> dict[str, Any] | None:
            return next((event for event in self.usage_events() if event["id"] == request_id), None)

        return wait_until(lookup, timeout, f"no usage event with id {request_id}", interval=0.1)

    # --- clients ----------------------------------------------------------------------------

    def client(self, api_key: str | None = None, **options: Any) -> openai.OpenAI:
        return sdk_client(self.base_url, self.key if api_key is None else api_key, **options)

    def post(self, path: str, body: bytes, headers: dict[str, str] | None = None, timeout: float = 30.0) -> HttpResponse:
        """POST raw bytes to the gateway with this gateway's key, unless `headers` sets auth itself."""
        request_headers = {"Content-Type": "application/json"}
        if not headers or not any(name.lower() in ("authorization", "x-api-key") for name in headers):
            request_headers["Authorization"] = f"Bearer {self.key}"
        request_headers.update(headers or {})
        return http_request(self.base_url + path, "POST", body, request_headers, timeout)

    def track(self, *texts: str) -> None:
        """Register prompts or completions that must never appear in the gateway's stderr."""
        self.secrets.extend(text for text in texts if text)

    # --- database outages -------------------------------------------------------------------

    @contextlib.contextmanager
    def database_unavailable(self) -> Iterator[None]:
        """Make the gateway's database reject writes until the block exits.

        SQLite: a connection from this process holds `BEGIN EXCLUSIVE`, so the gateway's inserts
        fail once its busy timeout passes. PostgreSQL: the database refuses new connections and
        its current sessions are ended.
        """
        if self.backend == "sqlite":
            connection = sqlite3.connect(self.sqlite_path, timeout=10.0, isolation_level=None)
            try:
                connection.execute("BEGIN EXCLUSIVE")
                yield
            finally:
                connection.execute("ROLLBACK")
                connection.close()
        else:
            assert self.database_name is not None
            block_postgres_database(self.database_name)
            try:
                yield
            finally:
                unblock_postgres_database(self.database_name)

    def journal_files(self) -> list[Path]:
        if not self.journal_dir.exists():
            return []
        return sorted(path for path in self.journal_dir.iterdir() if path.name.startswith("usage.journal"))

    def replaying_files(self) -> list[Path]:
        """Return the journal files that a replay moved aside and has not finished yet."""
        return [path for path in self.journal_files() if path.name.startswith("usage.journal.replaying-")]

    def journal_event_ids(self) -> list[str]:
        """Return the ids of the events in every journal file, including ones being replayed."""
        ids = []
        for path in self.journal_files():
            for line in path.read_text(errors="replace").splitlines():
                if line.strip():
                    with contextlib.suppress(json.JSONDecodeError):
                        ids.append(json.loads(line)["id"])
        return ids


# ---------------------------------------------------------------------------------------------
# Limits and alerts: requests from other loopback addresses, a second node on one database, a
# webhook receiver and an SMTP sink. Every server here listens on 127.0.0.1.


def http_request_from(
    source: str,
    url: str,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> HttpResponse:
    """Send one request like `http_request`, from the loopback address `source` (127.0.0.0/8)."""
    if not source.startswith("127."):
        raise ValueError(f"requests come only from loopback addresses, not from {source}")
    parts = urllib.parse.urlsplit(url)
    if parts.hostname != LOOPBACK:
        raise ValueError(f"tests send traffic only to {LOOPBACK}, not to {url}")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout, source_address=(source, 0))
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        data = response.read()
        return HttpResponse(response.status, {name.lower(): value for name, value in response.getheaders()}, data)
    finally:
        connection.close()


def admin_get(gateway: Gateway, path: str, token: str) -> HttpResponse:
    """GET an admin endpoint of `gateway` with the admin token."""
    return http_request(gateway.admin_url + path, headers={"Authorization": f"Bearer {token}"})


class SharedDatabaseNode(Gateway):
    """A second gateway on the database, project and key of `first`, with its own ports and state."""

    def __init__(self, first: Gateway, workdir: Path, config_overrides: dict[str, Any] | None = None):
        super().__init__(
            binary=first.binary,
            workdir=workdir,
            backend=first.backend,
            mock=first.mock,
            stderr_path=first.stderr_path,
            config_overrides=config_overrides if config_overrides is not None else first.config_overrides,
            environment=first.extra_environment,
        )
        self.first = first

    def prepare(self) -> None:
        self.config_dir.mkdir(parents=True)
        self.state_dir.mkdir(parents=True)
        shutil.copyfile(PRICING_SOURCE, self.config_dir / "pricing.yaml")
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        # The first node owns the database and drops it; this node only connects to it.
        self.database_name = None
        self.database_url = self.first.database_url
        self.listen_port = free_port()
        self.admin_port = free_port()
        self.project_id = self.first.project_id
        self.key = self.first.key
        self.key_id = self.first.key_id


class WebhookReceiver:
    """An HTTP server on 127.0.0.1 that records each POST and fails the first `failures` of them.

    It sends each response `delay_s` seconds after recording the POST.
    """

    def __init__(self, failures: int = 0, status_on_failure: int = 500, delay_s: float = 0.0):
        import http.server
        import threading

        receiver = self
        self.failures = failures
        self.status_on_failure = status_on_failure
        self.delay_s = delay_s
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the name http.server requires)
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with receiver.lock:
                    receiver.requests.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
                    failing = len(receiver.requests) <= receiver.failures
                time.sleep(receiver.delay_s)
                self.send_response(receiver.status_on_failure if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = http.server.ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://{LOOPBACK}:{self.server.server_address[1]}/hooks/watchllm"

    def received(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class SmtpSink:
    """A minimal SMTP server on 127.0.0.1 that accepts every message and keeps it in memory."""

    def __init__(self) -> None:
        import socketserver
        import threading

        sink = self
        self.messages: list[dict[str, Any]] = []
        self.lock = threading.Lock()

        class Handler(socketserver.StreamRequestHandler):
            def reply(self, line: str) -> None:
                self.wfile.write((line + "\r\n").encode())
                self.wfile.flush()

            def handle(self) -> None:
                self.reply("220 sink ESMTP")
                sender, recipients = "", []
                for _ in range(1000):
                    raw = self.rfile.readline()
                    if not raw:
                        return
                    command = raw.decode("utf-8", "replace").strip()
                    verb = command.split(" ", 1)[0].upper()
                    if verb in ("EHLO", "HELO"):
                        self.reply("250 sink")
                    elif verb == "MAIL":
                        sender = command.split(":", 1)[1].strip()
                        self.reply("250 OK")
                    elif verb == "RCPT":
                        recipients.append(command.split(":", 1)[1].strip())
                        self.reply("250 OK")
                    elif verb == "DATA":
                        self.reply("354 End data with <CR><LF>.<CR><LF>")
                        lines = []
                        for _ in range(100_000):
                            line = self.rfile.readline()
                            if not line or line in (b".\r\n", b".\n"):
                                break
                            lines.append(line)
                        with sink.lock:
                            sink.messages.append({"from": sender, "to": recipients, "data": b"".join(lines).decode("utf-8", "replace")})
                        sender, recipients = "", []
                        self.reply("250 OK queued")
                    elif verb == "QUIT":
                        self.reply("221 Bye")
                        return
                    else:
                        self.reply("250 OK")

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self.server = Server((LOOPBACK, 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def received(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.messages)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ---------------------------------------------------------------------------------------------
# The response cache.

# Where scripts/install-model.sh (run by scripts/setup.sh) installs the embedding model.
CACHE_MODEL_DIR = REPO_ROOT / "state" / "models" / "all-MiniLM-L6-v2"


def cache_overrides(semantic: bool = True, **cache: Any) -> dict[str, Any]:
    """Return config overrides that turn the response cache on, with small tiers for tests."""
    settings: dict[str, Any] = {
        "enabled": True,
        "memory_bytes": 8 * 1024 * 1024,
        "disk_bytes": 32 * 1024 * 1024,
        "index_save_interval_ms": 200,
        "semantic": {"enabled": semantic, "model_dir": str(CACHE_MODEL_DIR)},
    }
    return {"cache": deep_merge(settings, cache)}


def sse_data(body: bytes) -> list[str]:
    """Return the data of each event of an SSE body, `[DONE]` included."""
    events = []
    for block in body.decode("utf-8").replace("\r\n", "\n").split("\n\n"):
        lines = [line[5:].lstrip(" ") for line in block.split("\n") if line.startswith("data:")]
        if lines:
            events.append("\n".join(lines))
    return events


# ---------------------------------------------------------------------------------------------
# Upstream selection: a second mock on a port of the test's choosing, fake upstreams that fail
# in set ways, and management commands that read a secret from stdin. Every server here
# listens on 127.0.0.1.


class MockUpstreamOnPort(MockUpstream):
    """A `watchllm mock-upstream` on a fixed loopback port, so that it can stop and start again."""

    def __init__(self, binary: Path, log_dir: Path, port: int | None = None):
        super().__init__(binary, log_dir)
        self.port = port or free_port()
        self.log_path = log_dir / f"mock-upstream-{self.port}.stderr"

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [str(self.binary), "mock-upstream", "--listen", f"{LOOPBACK}:{self.port}"],
            stdout=subprocess.PIPE,
            stderr=log,
            env=base_environment(),
        )
        log.close()
        line = self._read_first_line(STARTUP_TIMEOUT_S)
        self.url = line.removeprefix("mock upstream listening on ").strip()
        self.root = self.url.removesuffix("/v1")
        if urllib.parse.urlsplit(self.url).hostname != LOOPBACK:
            self.stop()
            raise RuntimeError(f"mock upstream listens outside loopback: {self.url}")


class FakeUpstream:
    """A raw TCP server on 127.0.0.1 that reads each HTTP request whole and then either responds
    with a fixed status (`status`) or closes the connection without a response (`status=None`).

    `requests` counts the complete requests it read.
    """

    def __init__(self, status: int | None, retry_after: str | None = None):
        import threading

        self.status = status
        self.retry_after = retry_after
        self.requests = 0
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((LOOPBACK, 0))
        self._listener.listen(16)
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://{LOOPBACK}:{self.port}/v1"
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stopped.is_set():
            try:
                connection, _ = self._listener.accept()
            except OSError:
                continue
            with connection:
                connection.settimeout(5.0)
                if self._read_request(connection):
                    with self._lock:
                        self.requests += 1
                    self._answer(connection)

    def _read_request(self, connection: socket.socket) -> bool:
        data = b""
        with contextlib.suppress(OSError):
            while b"\r\n\r\n" not in data and len(data) < 1 << 20:
                chunk = connection.recv(65536)
                if not chunk:
                    return False
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            while len(body) < length:
                chunk = connection.recv(65536)
                if not chunk:
                    return False
                body += chunk
            return True
        return False

    def _answer(self, connection: socket.socket) -> None:
        if self.status is None:
            # The whole request was read; the connection ends without a response.
            return
        body = json.dumps({"error": {"message": f"fake upstream status {self.status}", "type": "server_error"}}).encode()
        extra = f"Retry-After: {self.retry_after}\r\n" if self.retry_after else ""
        head = (
            f"HTTP/1.1 {self.status} Fake\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        with contextlib.suppress(OSError):
            connection.sendall(head.encode() + body)

    def count(self) -> int:
        with self._lock:
            return self.requests

    def close(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5.0)
        self._listener.close()


def cli_with_input(gateway: Gateway, stdin: str, *arguments: str, environment: dict[str, str] | None = None,
                   check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a watchllm management command with `stdin` as its input, like `Gateway.cli`.

    `environment` replaces variables of the gateway's environment for this command only.
    """
    command_environment = gateway.environment()
    command_environment.update(environment or {})
    completed = subprocess.run(
        [str(gateway.binary), *arguments, "--config", str(gateway.config_path)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        env=command_environment,
        cwd=gateway.workdir,
    )
    if check and completed.returncode != 0:
        raise RuntimeError(f"watchllm {' '.join(arguments)} failed with exit code {completed.returncode}:\n{completed.stderr}")
    return completed


def admin_request(gateway: Gateway, method: str, path: str, token: str, body: Any = None) -> HttpResponse:
    """Send a request with the admin token to `gateway`'s admin listener; `body` is sent as JSON."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {token}"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    return http_request(gateway.admin_url + path, method, data, headers)


# ---------------------------------------------------------------------------------------------
# Usage analytics: raw usage events written straight to the database, and SQL on it.

# Columns of usage_events that seed_usage_events fills, in order.
USAGE_EVENT_COLUMNS = (
    "id", "created_at_ms", "project_id", "key_id", "endpoint", "model", "provider", "upstream_model",
    "status", "stream", "prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens",
    "total_tokens", "tokens_estimated", "cost_usd", "potential_cost_usd", "cache_status", "latency_ms",
    "ttfb_ms", "error_type", "key_source", "variant", "cache_similarity",
)


def usage_event_row(gateway: Gateway, created_at_ms: int, model: str = "gpt-4o-mini", cost_usd: float = 0.01,
                    **fields: Any) -> dict[str, Any]:
    """Return a usage event of `gateway`'s project with defaults for every column; `fields` override them."""
    row = {
        "id": f"seed-{secrets.token_hex(8)}", "created_at_ms": created_at_ms, "project_id": gateway.project_id,
        "key_id": gateway.key_id, "endpoint": "chat.completions", "model": model, "provider": "mock",
        "upstream_model": model, "status": 200, "stream": False, "prompt_tokens": 100, "completion_tokens": 50,
        "cached_tokens": 0, "reasoning_tokens": 0, "total_tokens": 150, "tokens_estimated": False,
        "cost_usd": cost_usd, "potential_cost_usd": cost_usd, "cache_status": "miss", "latency_ms": 400,
        "ttfb_ms": 100, "error_type": None, "key_source": "global", "variant": None, "cache_similarity": None,
    }
    row.update(fields)
    return row


def database_sql(gateway: Gateway, sql: str, parameters: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one SQL statement on `gateway`'s database and return its rows.

    SQLite takes `?` parameters; PostgreSQL runs through psql, which takes none, so PostgreSQL
    statements must be literal.
    """
    if gateway.backend == "sqlite":
        with contextlib.closing(sqlite3.connect(gateway.sqlite_path, timeout=10.0)) as connection:
            with connection:
                return connection.execute(sql, parameters).fetchall()
    assert not parameters, "psql statements take no parameters"
    assert gateway.database_name is not None
    output = psql(sql, database=gateway.database_name)
    return [tuple(line.split("|")) for line in output.splitlines() if line]


def seed_usage_events(gateway: Gateway, rows: list[dict[str, Any]]) -> None:
    """Insert usage events straight into `gateway`'s database, as an older gateway would have.

    The rollups do not see these rows until `watchllm rollup rebuild` covers their days.
    """
    if gateway.backend == "sqlite":
        placeholders = ", ".join("?" for _ in USAGE_EVENT_COLUMNS)
        values = [tuple(int(v) if isinstance(v, bool) else v for v in (row[c] for c in USAGE_EVENT_COLUMNS)) for row in rows]
        with contextlib.closing(sqlite3.connect(gateway.sqlite_path, timeout=10.0)) as connection:
            with connection:
                connection.executemany(f"INSERT INTO usage_events ({', '.join(USAGE_EVENT_COLUMNS)}) VALUES ({placeholders})", values)
        return

    def literal(value: Any) -> str:
        if value is None:
            return "NULL"
        if isinstance(value, bool):
            return "TRUE" if value else "FALSE"
        if isinstance(value, (int, float)):
            return repr(value)
        return "'" + str(value).replace("'", "''") + "'"

    for start in range(0, len(rows), 500):
        chunk = rows[start:start + 500]
        values = ", ".join("(" + ", ".join(literal(row[c]) for c in USAGE_EVENT_COLUMNS) + ")" for row in chunk)
        assert gateway.database_name is not None
        psql(f"INSERT INTO usage_events ({', '.join(USAGE_EVENT_COLUMNS)}) VALUES {values}", database=gateway.database_name)
