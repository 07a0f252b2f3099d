"""A masked input streamed in ranges into the one-process running sum (crypto/server.py).

Streamed senders, whole messages, aborted and cut-short streams in one round: every
refusal changes nothing, every undone stream is subtracted back exactly, and the result
is bit for bit the exact sum over the survivors (the whole-message path's result).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from sealagg.crypto import Phase, SecAggClient
from sealagg.crypto.errors import (
    DuplicateMessageError,
    MalformedMessageError,
    OutOfPhaseError,
    ReconstructionError,
    UnknownSenderError,
)
from sealagg.crypto.messages import MaskedInput
from sealagg.crypto.server import AggregateResult, SecAggServer, _CollectMaskedInputs
from sealagg.crypto.testing import RoundKit, make_round

D = 1001  # odd: ranges of odd word counts end anywhere


def drive(
    kit: RoundKit, masked: Callable[[SecAggServer, dict[int, MaskedInput]], None]
) -> tuple[SecAggServer, AggregateResult]:
    """Run a whole round; ``masked`` delivers the masked inputs (streamed or whole)."""
    server = SecAggServer(kit.config)
    clients = {u: SecAggClient(kit.config, u, kit.identities[u]) for u in kit.identities}
    for u, client in clients.items():
        client.set_input(kit.inputs[u])
        server.receive(u, client.advertise_keys())
    out = server.close_phase()
    while server.phase is not None:
        replies = {u: clients[u].handle(m) for u, m in out.items()}
        if server.phase == Phase.MASKED_INPUT:
            masked(server, replies)  # type: ignore[arg-type]
        else:
            for u, reply in replies.items():
                if reply is not None:
                    server.receive(u, reply)
        out = server.close_phase()
    return server, server.result


def ranges(vector: bytes | memoryview, rng: np.random.Generator) -> list[tuple[int, bytes]]:
    """``vector`` cut at random word borders (pieces of 1 to 300 words)."""
    words, at, out = len(vector) // 4, 0, []
    while at < words:
        n = int(rng.integers(1, 301))
        out.append((at, bytes(vector[4 * at : 4 * min(words, at + n)])))
        at += n
    return out


def collecting(server: SecAggServer) -> _CollectMaskedInputs:
    state = server._state
    assert type(state) is _CollectMaskedInputs
    return state


def test_streams_and_whole_messages_sum_bit_for_bit() -> None:
    """1-3 streamed (random chunkings, interleaved), 4 whole, 5 aborted halfway, 6 cut
    short (open at the close), 7 refused for a range out of order then streamed again;
    duplicates and a stray sender refused. Survivors 1, 2, 3, 4, 7; exact sum."""
    kit = make_round(7, threshold=3, dimension=D, seed=11)
    rng = np.random.default_rng(5)
    seen: dict[str, np.ndarray] = {}

    def masked(server: SecAggServer, inputs: dict[int, MaskedInput]) -> None:
        state = collecting(server)
        before = state.total.copy()
        plans = {u: ranges(inputs[u].vector, rng) for u in (1, 2, 3, 5, 6)}
        for u in plans:
            server.begin_masked_input(u)
        # Interleaved: each step, a random open stream sends its next range.
        cursor = dict.fromkeys(plans, 0)
        stop = {5: len(plans[5]) // 2, 6: len(plans[6]) - 1}  # 5 aborts, 6 is cut short
        while live := [u for u in plans if cursor[u] < stop.get(u, len(plans[u]))]:
            u = int(rng.choice(live))
            server.add_masked_range(u, *plans[u][cursor[u]])
            cursor[u] += 1
        assert not np.array_equal(state.total, before)  # added as they arrived
        server.receive(4, inputs[4])  # the whole-message path, alongside
        with pytest.raises(DuplicateMessageError):  # a whole message while streaming
            server.receive(1, inputs[1])
        with pytest.raises(MalformedMessageError, match="ended at word"):
            server.finish_masked_input(6, {})  # finishing early refuses and undoes it
        with pytest.raises(OutOfPhaseError):
            server.add_masked_range(6, *plans[6][-1])  # nothing left to add to
        server.begin_masked_input(6)
        server.add_masked_range(6, *plans[6][0])  # then cut short: open at the close
        for u in (1, 2, 3):
            server.finish_masked_input(u)
        assert server.abort_masked_input(5) and not server.abort_masked_input(5)
        assert not server.abort_masked_input(1)  # finished: counts, not undone
        with pytest.raises(DuplicateMessageError):
            server.begin_masked_input(1)
        with pytest.raises(DuplicateMessageError):
            server.begin_masked_input(4)
        with pytest.raises(UnknownSenderError):
            server.begin_masked_input(99)
        with pytest.raises(OutOfPhaseError):  # never begun
            server.add_masked_range(7, 0, bytes(inputs[7].vector[:8]))
        # 7: a range out of order (a gap) is refused and the stream undone ...
        pieces = ranges(inputs[7].vector, rng)
        server.begin_masked_input(7)
        server.add_masked_range(7, *pieces[0])
        with pytest.raises(MalformedMessageError, match="next one is at word"):
            server.add_masked_range(7, *pieces[2])
        with pytest.raises(MalformedMessageError, match="whole 4-byte words"):
            server.begin_masked_input(7)
            server.add_masked_range(7, 0, b"\x01\x02\x03")
        # ... then it streams again, whole, and counts once.
        server.begin_masked_input(7)
        for piece in pieces:
            server.add_masked_range(7, *piece)
        server.finish_masked_input(7)
        assert server.waiting_for == {5, 6}
        # The running sum is exactly the whole-message path's over 1, 2, 3, 4, 7 once 6's
        # open stream is undone (the close does that).
        reference = before.copy()
        for u in (1, 2, 3, 4, 7):
            reference += np.frombuffer(inputs[u].vector, dtype="<u4")
        seen["reference"] = reference
        seen["state"] = state  # type: ignore[assignment]

    _, result = drive(kit, masked)
    state = seen["state"]
    assert not state.streams  # type: ignore[attr-defined]
    np.testing.assert_array_equal(state.total, seen["reference"])  # type: ignore[attr-defined]
    assert result.survivors == (1, 2, 3, 4, 7)
    assert result.dropped_after_masking == (5, 6)
    np.testing.assert_array_equal(result.total, kit.expected_sum(result.survivors))


def test_streamed_round_equals_the_whole_message_round() -> None:
    """The same round twice, whole messages then every input streamed: the same survivors
    and a bit-identical unmasked sum (the exact FedAvg sum)."""
    kit = make_round(4, threshold=2, dimension=D, seed=2)
    rng = np.random.default_rng(9)

    def whole(server: SecAggServer, inputs: dict[int, MaskedInput]) -> None:
        for u, msg in inputs.items():
            server.receive(u, msg)

    def streamed(server: SecAggServer, inputs: dict[int, MaskedInput]) -> None:
        for u, msg in inputs.items():
            server.begin_masked_input(u)
            for piece in ranges(msg.vector, rng):
                server.add_masked_range(u, *piece)
            server.finish_masked_input(u, {})

    _, a = drive(kit, whole)
    _, b = drive(kit, streamed)
    assert a.survivors == b.survivors == (1, 2, 3, 4)
    np.testing.assert_array_equal(a.total, b.total)
    np.testing.assert_array_equal(b.total, kit.expected_sum(range(1, 5)))


def test_refused_outside_the_masked_input_phase_and_past_the_vector() -> None:
    kit = make_round(3, threshold=2, dimension=D, seed=4)
    server = SecAggServer(kit.config)
    with pytest.raises(OutOfPhaseError):
        server.begin_masked_input(1)
    assert not server.abort_masked_input(1)

    def masked(server: SecAggServer, inputs: dict[int, MaskedInput]) -> None:
        vector = bytes(inputs[1].vector)
        server.begin_masked_input(1)
        server.add_masked_range(1, 0, vector)
        with pytest.raises(MalformedMessageError, match="in a vector of"):
            server.add_masked_range(1, D, b"\0\0\0\0")  # past the end: undone
        assert 1 not in collecting(server).streams
        for u, msg in inputs.items():
            server.receive(u, msg)

    _, result = drive(kit, masked)
    np.testing.assert_array_equal(result.total, kit.expected_sum((1, 2, 3)))


def test_an_altered_journal_aborts_the_round() -> None:
    """An undo whose journal came back changed cannot be exact: no sum is released."""
    kit = make_round(3, threshold=2, dimension=D, seed=6)

    def masked(server: SecAggServer, inputs: dict[int, MaskedInput]) -> None:
        for u in (1, 2):
            server.receive(u, inputs[u])
        server.begin_masked_input(3)
        server.add_masked_range(3, 0, bytes(inputs[3].vector[:400]))
        journal = collecting(server).streams[3].journal
        journal.seek(8)
        journal.write(b"\xff\xff\xff\xff")
        assert server.abort_masked_input(3)

    with pytest.raises(ReconstructionError, match="could not be undone exactly"):
        drive(kit, masked)
