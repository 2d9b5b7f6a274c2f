"""Usage events survive a database outage, a crash of the gateway and a graceful stop.

While the database rejects writes, the gateway appends events to `<state_dir>/journal/` and
replays them later. Event ids are primary keys, so "exactly once" means that the stored ids
equal the ids of the requests sent, with none missing.
"""

from __future__ import annotations

import signal

import httpx2
import openai

from harness import Gateway, wait_until

REQUEST_ID_HEADER = "x-watchllm-request-id"
REQUEST_COUNT = 20

# With SQLite, each failed batch insert first waits for the gateway's 5 s busy timeout, and the
# events can arrive in more than one batch.
JOURNAL_TIMEOUT_S = 45.0
REPLAY_TIMEOUT_S = 30.0


def send_chat_requests(gateway: Gateway, count: int) -> list[str]:
    """Send `count` small chat completions and return their request ids."""
    client = gateway.client()
    request_ids = []
    for number in range(count):
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"durability request {number}"}]
        )
        assert raw.http_response.status_code == 200
        request_ids.append(raw.headers.get(REQUEST_ID_HEADER))
    return request_ids


def wait_for_journal(gateway: Gateway, request_ids: list[str]) -> list[str]:
    """Wait until every request id is in the journal and return the journaled ids."""
    journaled: list[str] = []

    def all_journaled() -> bool:
        nonlocal journaled
        journaled = gateway.journal_event_ids()
        return set(request_ids) <= set(journaled)

    wait_until(
        all_journaled,
        JOURNAL_TIMEOUT_S,
        f"{len(set(request_ids) & set(journaled))} of {len(request_ids)} events reached the journal",
        interval=0.2,
    )
    return journaled


def assert_stored_once(gateway: Gateway, request_ids: list[str]) -> None:
    """Wait for the replay to finish and check that the stored events are exactly the requests."""
    gateway.wait_for_events(len(request_ids), timeout=REPLAY_TIMEOUT_S)
    wait_until(
        lambda: not gateway.journal_event_ids() and not gateway.replaying_files(),
        REPLAY_TIMEOUT_S,
        "the journal still holds events after the replay",
    )
    stored_ids = [event["id"] for event in gateway.usage_events()]

    assert len(stored_ids) == len(request_ids)
    assert sorted(stored_ids) == sorted(request_ids)


def test_outage_journal_replay(gateway: Gateway) -> None:
    with gateway.database_unavailable():
        request_ids = send_chat_requests(gateway, REQUEST_COUNT)
        journaled = wait_for_journal(gateway, request_ids)

    assert len(set(request_ids)) == REQUEST_COUNT
    assert len(journaled) == len(set(journaled)), "the journal holds an event twice"
    assert_stored_once(gateway, request_ids)


def test_crash_journal_replay(gateway: Gateway) -> None:
    with gateway.database_unavailable():
        request_ids = send_chat_requests(gateway, REQUEST_COUNT)
        wait_for_journal(gateway, request_ids)
        gateway.kill()

    assert gateway.process.returncode == -signal.SIGKILL
    assert set(request_ids) <= set(gateway.journal_event_ids())
    gateway.start()
    assert_stored_once(gateway, request_ids)


def test_sigterm_flushes_events(gateway_factory) -> None:
    # A flush interval far beyond the test keeps the events in memory until the shutdown.
    gateway = gateway_factory(config_overrides={"accounting": {"flush_interval_ms": 600_000}})
    request_ids = send_chat_requests(gateway, 3)

    exit_code = gateway.stop()
    stored_ids = [event["id"] for event in gateway.usage_events()]
    journaled_ids = gateway.journal_event_ids()

    assert exit_code == 0
    assert sorted(stored_ids + journaled_ids) == sorted(request_ids), (
        f"{len(request_ids)} requests, {len(stored_ids)} events stored, {len(journaled_ids)} journaled"
    )


def test_sigterm_finishes_stream(gateway: Gateway) -> None:
    # The stream lasts about 1.2 s, well within the test config's 5 s shutdown grace.
    pieces: list[str] = []
    stream_error: Exception | None = None

    try:
        with gateway.client().chat.completions.with_streaming_response.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "stream during shutdown"}],
            stream=True,
            extra_headers={"x-mock-chunks": "5", "x-mock-chunk-delay-ms": "200"},
        ) as response:
            request_id = response.headers.get(REQUEST_ID_HEADER)
            for chunk in response.parse():
                if chunk.choices and chunk.choices[0].delta.content:
                    if not pieces:
                        gateway.process.send_signal(signal.SIGTERM)
                    pieces.append(chunk.choices[0].delta.content)
    except (httpx2.HTTPError, openai.APIError) as error:
        stream_error = error
    exit_code = gateway.process.wait(15)
    events = gateway.usage_events()

    assert stream_error is None, f"the stream broke after {len(pieces)} of 5 chunks: {stream_error!r}"
    assert len(pieces) == 5
    assert exit_code == 0
    assert [event["id"] for event in events] == [request_id]
    assert events[0]["error_type"] is None
    assert events[0]["completion_tokens"] == len("".join(pieces).split())
