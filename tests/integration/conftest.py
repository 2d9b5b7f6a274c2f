"""Fixtures of the WatchLLM integration tests.

`mock_upstream` runs one mock provider for the whole session. `gateway` starts a gateway with
its own state directory and database, once per backend (SQLite and PostgreSQL). After the test
it stops the gateway, drops the PostgreSQL database, and checks that the gateway's stderr
contains none of the keys, prompts and completions that the test registered.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from harness import Gateway, MockUpstream, binary_path, find_leaks

BACKENDS = ("sqlite", "postgres")


@pytest.fixture(scope="session")
def watchllm_binary() -> Path:
    return binary_path()


@pytest.fixture(scope="session")
def mock_upstream(watchllm_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MockUpstream]:
    mock = MockUpstream(watchllm_binary, tmp_path_factory.mktemp("mock"))
    mock.start()
    yield mock
    mock.stop()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


GatewayFactory = Callable[..., Gateway]


@pytest.fixture
def gateway_factory(
    watchllm_binary: Path,
    mock_upstream: MockUpstream,
    backend: str,
    tmp_path: Path,
) -> Iterator[GatewayFactory]:
    """Return a function that starts a gateway, with optional config overrides and environment.

    Every gateway of a test appends its stderr to one file, `gateway.stderr` in the test's
    temporary directory.
    """
    created: list[Gateway] = []
    numbers = itertools.count(1)
    stderr_path = tmp_path / "gateway.stderr"

    def create(
        config_overrides: dict[str, Any] | None = None,
        environment: dict[str, str] | None = None,
        start: bool = True,
    ) -> Gateway:
        gateway = Gateway(
            binary=watchllm_binary,
            workdir=tmp_path / f"gateway-{next(numbers)}",
            backend=backend,
            mock=mock_upstream,
            stderr_path=stderr_path,
            config_overrides=config_overrides,
            environment=environment,
        )
        created.append(gateway)
        gateway.prepare()
        if start:
            gateway.start()
        return gateway

    yield create

    close_errors = []
    for gateway in created:
        try:
            gateway.close()
        except (OSError, RuntimeError) as error:
            close_errors.append(error)
    if close_errors:
        raise close_errors[0]

    logged = stderr_path.read_text(errors="replace") if stderr_path.exists() else ""
    tracked = [secret for gateway in created for secret in gateway.secrets]
    leaks = find_leaks(logged, tracked)
    assert not leaks, f"the gateway logged keys, prompts or completions to {stderr_path}:\n" + "\n".join(leaks)


@pytest.fixture
def gateway(gateway_factory: GatewayFactory) -> Gateway:
    """A running gateway with the default test config."""
    return gateway_factory()
