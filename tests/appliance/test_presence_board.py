"""PresenceBoard transitions (issue 25): when a client counts as vanished, and when it does not.

The board is the appliance's only source for "stop waiting for this client": a false
"vanished" drops a live client from a phase, a missed one costs everyone a deadline. Each
test drives the transitions the service's Presence handler produces and checks the events
the orchestrator would see.
"""

from __future__ import annotations

import pytest

from sealagg.appliance.presence import (
    CONNECTION_CLOSED,
    MAX_QUEUED_NOTICES,
    SILENT,
    PresenceBoard,
    TooManyStreamsError,
)


class Recorder:
    def __init__(self, max_streams: int = 2) -> None:
        self.vanished: list[tuple[str, str]] = []
        self.beats: list[tuple[str, bytes]] = []
        self.board = PresenceBoard(
            max_streams=max_streams,
            on_vanished=lambda name, reason: self.vanished.append((name, reason)),
            on_heartbeat=lambda name, round_id: self.beats.append((name, round_id)),
        )


def test_closing_the_only_stream_vanishes_with_connection_closed():
    r = Recorder()
    token = r.board.open("alice")
    assert r.board.is_live("alice") and not r.board.is_gone("alice")
    r.board.close(token)
    assert r.vanished == [("alice", CONNECTION_CLOSED)]
    assert r.board.is_gone("alice") and not r.board.is_live("alice")
    r.board.close(token)  # a second report of the same end is no new event
    assert r.vanished == [("alice", CONNECTION_CLOSED)]


def test_overlapping_streams_closing_the_old_one_does_not_vanish():
    """A reconnect opens the new stream before the transport reports the old one's end:
    the old end must not count the client as vanished while the new stream is live."""
    r = Recorder()
    old = r.board.open("alice")
    new = r.board.open("alice")
    r.board.close(old)
    assert r.vanished == [] and r.board.is_live("alice") and not r.board.is_gone("alice")
    r.board.close(new)
    assert r.vanished == [("alice", CONNECTION_CLOSED)]


def test_a_silent_old_stream_does_not_vanish_while_another_is_live():
    r = Recorder()
    old = r.board.open("alice")
    r.board.open("alice")
    r.board.silent(old)
    assert r.vanished == [] and r.board.is_live("alice")


def test_silent_then_beat_then_closed():
    """Silence counts once (``silent``); a later heartbeat makes the stream live again and
    reaches the orchestrator (which decides whether to take the client back); the end of a
    stream already reported silent is not reported a second time."""
    r = Recorder()
    token = r.board.open("alice")
    r.board.silent(token)
    r.board.silent(token)  # the next silence period of the same silence: no new event
    assert r.vanished == [("alice", SILENT)]
    assert r.board.is_gone("alice")
    r.board.heartbeat(token, b"round-1")
    assert r.beats == [("alice", b"round-1")]
    assert r.board.is_live("alice") and not r.board.is_gone("alice")
    r.board.silent(token)
    assert r.vanished == [("alice", SILENT), ("alice", SILENT)]
    r.board.close(token)
    assert r.vanished == [("alice", SILENT), ("alice", SILENT)]
    assert r.board.is_gone("alice")


def test_a_live_stream_closed_after_its_silence_ended_vanishes_once():
    r = Recorder()
    token = r.board.open("alice")
    r.board.silent(token)
    r.board.heartbeat(token, b"")
    r.board.close(token)
    assert r.vanished == [("alice", SILENT), ("alice", CONNECTION_CLOSED)]


def test_events_for_unknown_tokens_are_ignored():
    r = Recorder()
    r.board.heartbeat(99, b"x")
    r.board.silent(99)
    r.board.close(99)
    assert r.vanished == [] and r.beats == []


def test_a_client_that_never_opened_a_stream_is_never_gone():
    """An older shim (poll only) is bound by deadlines, never counted as vanished."""
    r = Recorder()
    assert not r.board.is_gone("old") and not r.board.is_live("old")
    r.board.polled("old")
    assert not r.board.is_gone("old")


def test_polled_makes_a_streamless_client_not_gone():
    """A client whose stream closed and who then polls without a stream turned presence
    off (or is an older process on the same kit): from then on deadlines bound it."""
    r = Recorder()
    token = r.board.open("alice")
    r.board.close(token)
    assert r.board.is_gone("alice")
    r.board.polled("alice")
    assert not r.board.is_gone("alice")
    again = r.board.open("alice")  # presence again: gone once its stream ends
    r.board.close(again)
    assert r.board.is_gone("alice")


def test_polled_while_holding_a_silent_stream_stays_gone():
    """Polling does not override a stream that fell silent: only its heartbeat does."""
    r = Recorder()
    token = r.board.open("alice")
    r.board.silent(token)
    r.board.polled("alice")
    assert r.board.is_gone("alice")


def test_too_many_streams_are_refused_per_client():
    r = Recorder(max_streams=2)
    first = r.board.open("alice")
    r.board.open("alice")
    with pytest.raises(TooManyStreamsError, match="already holds 2 presence streams"):
        r.board.open("alice")
    r.board.open("bob")  # the bound is per client
    r.board.close(first)
    r.board.open("alice")  # a closed stream frees its place
    assert r.board.live_count() == 2


def test_live_count_counts_clients_with_a_live_stream():
    r = Recorder()
    a1 = r.board.open("alice")
    r.board.open("alice")
    b = r.board.open("bob")
    assert r.board.live_count() == 2
    r.board.silent(b)
    assert r.board.live_count() == 1
    r.board.close(a1)
    assert r.board.live_count() == 1


def test_notify_dropped_reaches_every_stream_of_the_client_and_is_bounded():
    """A client that never reads its notices keeps only the newest MAX_QUEUED_NOTICES:
    the appliance's memory does not grow with a slow reader."""
    r = Recorder()
    s1 = r.board.open("alice")
    s2 = r.board.open("alice")
    other = r.board.open("bob")
    for i in range(3 * MAX_QUEUED_NOTICES):
        r.board.notify_dropped("alice", bytes([i]) * 32, "masked_input", CONNECTION_CLOSED)
    for token in (s1, s2):
        queue = r.board.notices(token)
        assert queue.qsize() == MAX_QUEUED_NOTICES
        kept = [queue.get_nowait() for _ in range(MAX_QUEUED_NOTICES)]
        first_kept = 3 * MAX_QUEUED_NOTICES - MAX_QUEUED_NOTICES
        assert [n.dropped_round_id[0] for n in kept] == list(
            range(first_kept, 3 * MAX_QUEUED_NOTICES)
        )
        assert {(n.dropped_phase, n.dropped_reason) for n in kept} == {
            ("masked_input", CONNECTION_CLOSED)
        }
    assert r.board.notices(other).empty()
    r.board.notify_dropped("nobody", b"r" * 32, "share_keys", SILENT)  # no stream: nothing
