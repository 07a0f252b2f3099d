"""The server side of pairwise-mask secure aggregation, one small state per phase.

Transport-free: the appliance hands each decoded message to :meth:`SecAggServer.receive`
together with the sender id it took from the client's TLS certificate, and calls
:meth:`SecAggServer.close_phase` when everyone answered or the deadline passed.
A bad message is refused with a specific exception and changes nothing, so the
round goes on for the others. In the masked-input phase the server keeps only a
running sum: O(d) memory whatever the number of clients.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from sealagg.crypto import _transcript as tr
from sealagg.crypto._primitives.agreement import AgreementKey
from sealagg.crypto._primitives.prg import apply_masks
from sealagg.crypto._primitives.shamir import combine_shares
from sealagg.crypto._primitives.signing import verify_signature
from sealagg.crypto.config import RoundConfig
from sealagg.crypto.errors import (
    BelowThresholdError,
    DuplicateMessageError,
    MalformedMessageError,
    OutOfPhaseError,
    ReconstructionError,
    ReplayedMessageError,
    SecAggError,
    UnknownSenderError,
)
from sealagg.crypto.messages import (
    AdvertiseKeys,
    ConsistencySignature,
    KeyDirectory,
    MaskedInput,
    Message,
    PeerKeys,
    Phase,
    ShareBundle,
    ShareKeys,
    SurvivorList,
    UnmaskRequest,
    UnmaskShares,
)
from sealagg.kernels import mod_add_bytes_into

SECRET_BYTES = 32


@dataclasses.dataclass(frozen=True)
class AggregateResult:
    """The unmasked sum over ``survivors`` in Z_(2^32), and who dropped when."""

    total: np.ndarray
    survivors: tuple[int, ...]
    dropped_before_masking: tuple[int, ...]
    dropped_after_masking: tuple[int, ...]


class _State:
    """Refuses every message; each concrete state accepts only its phase's."""

    phase: Phase
    accepts: type[Message]

    def __init__(self, config: RoundConfig, expected: frozenset[int]) -> None:
        self.config = config
        self.expected = expected
        self.received: dict[int, Message | None] = {}

    def receive(self, sender: int, msg: Message) -> None:
        if not isinstance(msg, self.accepts):
            raise OutOfPhaseError(f"{msg.TYPE} is not accepted in phase {self.phase.name}")
        if sender not in self.expected:
            raise UnknownSenderError(f"client {sender} is not expected in phase {self.phase.name}")
        if sender in self.received:
            raise DuplicateMessageError(f"client {sender} already sent its {msg.TYPE}")
        self.check(sender, msg)
        self.received[sender] = msg

    def check(self, sender: int, msg: Message) -> None:
        """Validate contents before the message counts (override per phase)."""

    def require(self, count: int, what: str) -> None:
        if count < self.config.minimum_survivors:
            raise BelowThresholdError(
                f"{what}: {count} clients, at least {self.config.minimum_survivors} required"
            )


class _CollectKeys(_State):
    phase = Phase.ADVERTISE_KEYS
    accepts = AdvertiseKeys

    def check(self, sender: int, msg: Message) -> None:
        assert isinstance(msg, AdvertiseKeys)
        cfg = self.config
        payload = tr.advertise_payload(
            cfg.round_id, sender, msg.keys.cipher_public, msg.keys.mask_public
        )
        verify_signature(
            cfg.identities[sender], payload, msg.keys.signature, signer=f"client {sender}"
        )

    def close(self) -> tuple[dict[int, Message], _State]:
        keys = {u: m.keys for u, m in self.received.items()}  # type: ignore[attr-defined]
        active = _prune_below_threshold(self.config, set(keys))
        self.require(len(active), "advertise keys")
        graph = self.config.graph
        out: dict[int, Message] = {
            u: KeyDirectory(
                self.config.round_id, {v: keys[v] for v in graph.neighbours(u) if v in active}
            )
            for u in sorted(active)
        }
        active_keys = {u: keys[u] for u in active}
        return out, _CollectShares(self.config, frozenset(active), active_keys)


def _prune_below_threshold(config: RoundConfig, active: set[int]) -> set[int]:
    """Drop clients with fewer than t active neighbours: their secrets could not be recovered."""
    graph = config.graph
    changed = True
    while changed:
        changed = False
        for u in sorted(active):
            if sum(v in active for v in graph.neighbours(u)) < config.threshold:
                active.discard(u)
                changed = True
    return active


class _CollectShares(_State):
    phase = Phase.SHARE_KEYS
    accepts = ShareKeys

    def __init__(
        self, config: RoundConfig, expected: frozenset[int], keys: Mapping[int, PeerKeys]
    ) -> None:
        super().__init__(config, expected)
        self.keys = keys

    def check(self, sender: int, msg: Message) -> None:
        assert isinstance(msg, ShareKeys)
        wanted = {v for v in self.config.graph.neighbours(sender) if v in self.expected}
        if set(msg.sealed_shares) != wanted:
            raise MalformedMessageError(
                f"client {sender} must send one sealed share to each of its {len(wanted)} active "
                f"neighbours, sent {len(msg.sealed_shares)}"
            )

    def close(self) -> tuple[dict[int, Message], _State]:
        sharers = frozenset(self.received)
        self.require(len(sharers), "share keys")
        out: dict[int, Message] = {}
        for v in sorted(sharers):
            bundle = {
                u: self.received[u].sealed_shares[v]  # type: ignore[attr-defined]
                for u in self.config.graph.neighbours(v)
                if u in sharers
            }
            out[v] = ShareBundle(self.config.round_id, bundle)
        return out, _CollectMaskedInputs(self.config, sharers, self.keys)


class _CollectMaskedInputs(_State):
    phase = Phase.MASKED_INPUT
    accepts = MaskedInput

    def __init__(
        self, config: RoundConfig, expected: frozenset[int], keys: Mapping[int, PeerKeys]
    ) -> None:
        super().__init__(config, expected)
        self.keys = keys
        self.total = np.zeros(config.vector_length, dtype=np.uint32)

    def receive(self, sender: int, msg: Message) -> None:
        super().receive(sender, msg)
        assert isinstance(msg, MaskedInput)
        mod_add_bytes_into(self.total, msg.vector, 1)  # the buffer is viewed, not copied
        self.received[sender] = None  # keep O(d): drop the vector, remember the sender

    def check(self, sender: int, msg: Message) -> None:
        assert isinstance(msg, MaskedInput)
        expected_bytes = 4 * self.config.vector_length
        if len(msg.vector) != expected_bytes:
            raise MalformedMessageError(
                f"client {sender} sent {len(msg.vector)} bytes; the round expects {expected_bytes}"
            )

    def close(self) -> tuple[dict[int, Message], _State]:
        survivors = tuple(sorted(self.received))
        self.require(len(survivors), "masked input")
        out: dict[int, Message] = {
            u: SurvivorList(self.config.round_id, survivors) for u in survivors
        }
        nxt = _CollectSignatures(
            self.config, frozenset(survivors), self.keys, self.expected, self.total
        )
        return out, nxt


class _CollectSignatures(_State):
    phase = Phase.CONSISTENCY_CHECK
    accepts = ConsistencySignature

    def __init__(
        self,
        config: RoundConfig,
        survivors: frozenset[int],
        keys: Mapping[int, PeerKeys],
        sharers: frozenset[int],
        total: np.ndarray,
    ) -> None:
        super().__init__(config, survivors)
        self.keys = keys
        self.sharers = sharers
        self.total = total
        self.survivors = tuple(sorted(survivors))
        self.survivors_blob = tr.encode_ids(self.survivors)

    def check(self, sender: int, msg: Message) -> None:
        assert isinstance(msg, ConsistencySignature)
        payload = tr.survivors_payload(self.config.round_id, sender, self.survivors_blob)
        verify_signature(
            self.config.identities[sender], payload, msg.signature, signer=f"client {sender}"
        )

    def close(self) -> tuple[dict[int, Message], _State]:
        signatures = {u: m.signature for u, m in self.received.items()}  # type: ignore[attr-defined]
        self.require(len(signatures), "consistency check")
        dropped = tuple(sorted(self.sharers - set(self.survivors)))
        request = UnmaskRequest(self.config.round_id, self.survivors, signatures, dropped)
        out: dict[int, Message] = {u: request for u in sorted(signatures)}
        nxt = _CollectUnmaskShares(
            self.config, frozenset(signatures), self.keys, self.survivors, dropped, self.total
        )
        return out, nxt


class _CollectUnmaskShares(_State):
    phase = Phase.UNMASKING
    accepts = UnmaskShares

    def __init__(
        self,
        config: RoundConfig,
        responders: frozenset[int],
        keys: Mapping[int, PeerKeys],
        survivors: tuple[int, ...],
        dropped: tuple[int, ...],
        total: np.ndarray,
    ) -> None:
        super().__init__(config, responders)
        self.keys = keys
        self.survivors = survivors
        self.dropped = dropped
        self.total = total

    def check(self, sender: int, msg: Message) -> None:
        assert isinstance(msg, UnmaskShares)
        graph = self.config.graph
        mine = set(graph.neighbours(sender))
        if not set(msg.self_mask_shares) <= mine & set(self.survivors):
            raise MalformedMessageError(f"client {sender} sent self-mask shares it cannot hold")
        if not set(msg.mask_key_shares) <= mine & set(self.dropped):
            raise MalformedMessageError(f"client {sender} sent mask-key shares it cannot hold")

    def close(self) -> tuple[dict[int, Message], AggregateResult]:
        self_seeds = {u: self._reconstruct(u, "self_mask_shares") for u in self.survivors}
        mask_keys = {v: self._recover_mask_key(v) for v in self.dropped}
        total = self.total.copy()
        round_id = self.config.round_id
        masks = [(tr.self_mask_key(seed, round_id), -1) for seed in self_seeds.values()]
        survivors = set(self.survivors)
        for v, key in mask_keys.items():
            for w in self.config.graph.neighbours(v):
                if w in survivors:
                    secret = key.exchange(self.keys[w].mask_public)
                    # w added sign(w, v)·PRG; remove it.
                    masks.append(
                        (tr.pairwise_mask_key(secret, round_id, w, v), -tr.pairwise_sign(w, v))
                    )
        apply_masks(total, masks)
        result = AggregateResult(
            total=total,
            survivors=self.survivors,
            dropped_before_masking=tuple(
                sorted(set(self.config.identities) - set(self.keys) - survivors)
            ),
            dropped_after_masking=self.dropped,
        )
        return {}, result

    def _shares_for(self, owner: int, field: str) -> dict[int, bytes]:
        return {
            holder: getattr(msg, field)[owner]
            for holder, msg in self.received.items()
            if owner in getattr(msg, field)
        }

    def _reconstruct(self, owner: int, field: str) -> bytes:
        shares = self._shares_for(owner, field)
        if len(shares) < self.config.threshold:
            raise BelowThresholdError(
                f"only {len(shares)} shares for client {owner}; threshold {self.config.threshold}: "
                "the round is aborted and no partial sum is released"
            )
        return combine_shares(shares, self.config.threshold, SECRET_BYTES)

    def _recover_mask_key(self, owner: int) -> AgreementKey:
        key = AgreementKey.from_private_bytes(self._reconstruct(owner, "mask_key_shares"))
        if key.public_bytes != self.keys[owner].mask_public:
            raise ReconstructionError(
                f"shares of client {owner}'s mask key reconstruct the wrong key"
            )
        return key


class SecAggServer:
    """The aggregator's part in one round: receive messages, close phases, unmask."""

    def __init__(self, config: RoundConfig) -> None:
        self.config = config
        self._state: _State | None = _CollectKeys(config, frozenset(config.identities))
        self._result: AggregateResult | None = None
        self._error: SecAggError | None = None

    @property
    def phase(self) -> Phase | None:
        """The phase now collecting messages; ``None`` once finished or aborted."""
        return self._state.phase if self._state is not None else None

    @property
    def waiting_for(self) -> frozenset[int]:
        """Clients expected in this phase that have not answered yet."""
        if self._state is None:
            return frozenset()
        return self._state.expected - set(self._state.received)

    @property
    def result(self) -> AggregateResult:
        if self._result is None:
            raise OutOfPhaseError("the round has not finished")
        return self._result

    @property
    def abort_error(self) -> SecAggError | None:
        return self._error

    def receive(self, sender: int, msg: Message) -> None:
        """Accept one client's message; ``sender`` comes from the transport, never the message."""
        if self._state is None:
            raise OutOfPhaseError("the round is over")
        if msg.round_id != self.config.round_id:
            raise ReplayedMessageError(f"{msg.TYPE} from client {sender} belongs to another round")
        if sender not in self.config.identities:
            raise UnknownSenderError(f"client {sender} is not a participant of this round")
        self._state.receive(sender, msg)

    def close_phase(self) -> dict[int, Message]:
        """End the current phase (all in, or deadline): the messages to send to each client.

        Raises :class:`BelowThresholdError` (and aborts the round) when too few remain.
        """
        if self._state is None:
            raise OutOfPhaseError("the round is over")
        try:
            out, nxt = self._state.close()  # type: ignore[attr-defined]
        except SecAggError as error:
            self._state, self._error = None, error
            raise
        if isinstance(nxt, AggregateResult):
            self._state, self._result = None, nxt
        else:
            self._state = nxt
        return out
