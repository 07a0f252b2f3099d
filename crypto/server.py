"""The server side of pairwise-mask secure aggregation, one small state per phase.

Transport-free: the appliance hands each decoded message to :meth:`SecAggServer.receive`
together with the sender id it took from the client's TLS certificate, and calls
:meth:`SecAggServer.close_phase` when everyone answered or the deadline passed.
A bad message is refused with a specific exception and changes nothing, so the
round goes on for the others. In the masked-input phase the server keeps only a
running sum: O(d) memory whatever the number of clients. A masked input may also arrive
in ranges, added into the sum as they come (:meth:`SecAggServer.begin_masked_input`,
``add_masked_range``, ``finish_masked_input``, ``abort_masked_input``): a stream that
does not finish is subtracted back out exactly, so the sum is as if it never came.

Against malicious clients (issue 17, item 6): low-order keys, and keys outside the
prime-order subgroup, are refused at advertisement; the graph seed comes from coins
every committed client must reveal (:mod:`crypto.coins`: one missing coin aborts the
round; a complete graph has no seed to steer, so its rounds skip the reveal); every
sealed share must carry its sender's signature and commitments to both shares inside; a
recipient's blame carries proofs of the pair's two X25519 secrets, so the server opens
the share itself and *every* blame is judged: a bad share excludes its sender (treated
as dropped if its masked input has not been counted yet), a good one refuses the
blamer's masked input. At unmasking each revealed share is checked against its owner's
signed commitment: a holder that lies is named and its share dropped, and every secret
rebuilt is checked against what its owner signed (the seed commitment, the mask public
key). Too few good shares abort the round: never a wrong sum.

What stays unjudgeable is silence: a holder that does not answer the unmask request,
or a committed client that does not reveal its coin, looks like a dropout. The first
aborts the round when it leaves fewer than t shares of some secret, the second always.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import itertools
import tempfile
import threading
import types
from collections.abc import Callable, Mapping

import numpy as np

from sealagg.crypto import _transcript as tr
from sealagg.crypto import coins
from sealagg.crypto._primitives.aead import open_sealed
from sealagg.crypto._primitives.agreement import AgreementKey
from sealagg.crypto._primitives.dh_proof import proven_secret
from sealagg.crypto._primitives.prg import apply_masks
from sealagg.crypto._primitives.shamir import combine_shares
from sealagg.crypto._primitives.signing import verify_signature
from sealagg.crypto.config import RoundConfig, active_after_pruning
from sealagg.crypto.errors import (
    BelowThresholdError,
    BlameRefusedError,
    DecryptionError,
    DuplicateMessageError,
    ExcludedSenderError,
    MalformedMessageError,
    OutOfPhaseError,
    ReconstructionError,
    ReplayedMessageError,
    SecAggError,
    UnknownSenderError,
)
from sealagg.crypto.graph import CommunicationGraph
from sealagg.crypto.messages import (
    SHARE_BYTES,
    AdvertiseKeys,
    Blame,
    CoinDirectory,
    ConsistencySignature,
    KeyDirectory,
    MaskedInput,
    Message,
    PeerKeys,
    Phase,
    RevealCoin,
    ShareBundle,
    ShareKeys,
    SignedShare,
    SurvivorList,
    UnmaskRequest,
    UnmaskShares,
)
from sealagg.kernels import mod_add_bytes_into

SECRET_BYTES = 32
#: Bytes read back at a time when a streamed masked input is undone (a multiple of 4).
UNDO_BLOCK_BYTES = 1 << 20
#: Subsets of t shares tried when the shares of one secret disagree (a holder lied).
MAX_RECONSTRUCTION_ATTEMPTS = 256


@dataclasses.dataclass(frozen=True)
class AggregateResult:
    """The unmasked sum over ``survivors`` in Z_(2^32), and who dropped when."""

    total: np.ndarray
    survivors: tuple[int, ...]
    dropped_before_masking: tuple[int, ...]
    dropped_after_masking: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class BlameRecord:
    """Proven misbehaviour of ``accused``, which is excluded from the round.

    Either a recipient (``accuser``) showed a share the accused signed and proved the
    pair's key (the share does not open, is malformed or does not match the accused's
    signed commitments), or, at unmasking, the accused revealed a share of ``accuser``'s
    secret that does not match ``accuser``'s signed commitment. The evidence is signed by
    the accused or checked against what it signed, so a third party can check it too.
    """

    accused: int
    accuser: int
    reason: str


@dataclasses.dataclass
class _Facts:
    """What the key directory fixed, plus what blames added, shared by later phases."""

    transcript: bytes
    graph: CommunicationGraph
    keys: Mapping[int, PeerKeys]
    #: The signed shares each sharer uploaded, by sender then recipient (blame evidence).
    uploaded: dict[int, Mapping[int, SignedShare]] = dataclasses.field(default_factory=dict)
    #: (u, v): u left its pairwise mask with v out of y_u; the value is that mask's key.
    unmasked_pairs: dict[tuple[int, int], bytes] = dataclasses.field(default_factory=dict)
    blames: list[BlameRecord] = dataclasses.field(default_factory=list)
    excluded: set[int] = dataclasses.field(default_factory=set)
    #: The consistency check's signing committee (:mod:`crypto.committee`); ``None``: full quorum.
    committee: frozenset[int] | None = None


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
        tr.check_advertisement(self.config, sender, msg.keys)  # signature, then low-order keys

    def close(self) -> tuple[dict[int, Message], _State]:
        cfg = self.config
        keys = {u: m.keys for u, m in self.received.items()}  # type: ignore[attr-defined]
        self.require(len(keys), "advertise keys")
        transcript = tr.transcript_hash(cfg, keys)
        directory = KeyDirectory(cfg.round_id, keys)  # the whole transcript, for everyone
        if not cfg.reveals_coins:  # complete graph: no seed to steer, straight to the shares
            graph = cfg.graph_for(transcript)  # the seed is not read for a complete graph
            active = active_after_pruning(graph, keys, cfg.threshold)
            self.require(len(active), "advertise keys")
            out: dict[int, Message] = {u: directory for u in sorted(active)}
            return out, _CollectShares(cfg, active, _Facts(transcript, graph, keys))
        out = {u: directory for u in sorted(keys)}
        return out, _CollectCoins(cfg, frozenset(keys), transcript, keys)


class _CollectCoins(_State):
    """Every client of the key directory reveals its coin; then the graph is drawn."""

    phase = Phase.REVEAL_COINS
    accepts = RevealCoin

    def __init__(
        self,
        config: RoundConfig,
        expected: frozenset[int],
        transcript: bytes,
        keys: Mapping[int, PeerKeys],
    ) -> None:
        super().__init__(config, expected)
        self.transcript = transcript
        self.keys = keys

    def check(self, sender: int, msg: Message) -> None:
        assert isinstance(msg, RevealCoin)
        commitment = self.keys[sender].coin_commitment
        coins.check_coin(self.config.round_id, sender, commitment, msg.coin)

    def close(self) -> tuple[dict[int, Message], _State]:
        cfg = self.config
        revealed = {u: m.coin for u, m in self.received.items()}  # type: ignore[attr-defined]
        commitments = {u: k.coin_commitment for u, k in self.keys.items()}
        # Raises CoinRevealError (the round aborts) unless every committed coin is in.
        seed = coins.graph_seed(cfg.round_id, self.transcript, commitments, revealed)
        graph = cfg.graph_for(seed)  # drawn only now: nobody could steer it
        active = active_after_pruning(graph, self.keys, cfg.threshold)
        self.require(len(active), "reveal coins")
        directory = CoinDirectory(cfg.round_id, revealed)
        out: dict[int, Message] = {u: directory for u in sorted(active)}
        facts = _Facts(self.transcript, graph, self.keys, committee=cfg.committee_for(seed))
        return out, _CollectShares(cfg, active, facts)


class _CollectShares(_State):
    phase = Phase.SHARE_KEYS
    accepts = ShareKeys

    def __init__(self, config: RoundConfig, expected: frozenset[int], facts: _Facts) -> None:
        super().__init__(config, expected)
        self.facts = facts

    def check(self, sender: int, msg: Message) -> None:
        assert isinstance(msg, ShareKeys)
        wanted = {v for v in self.facts.graph.neighbours(sender) if v in self.expected}
        if set(msg.sealed_shares) != wanted:
            raise MalformedMessageError(
                f"client {sender} must send one sealed share to each of its {len(wanted)} active "
                f"neighbours, sent {len(msg.sealed_shares)}"
            )
        # Every share must carry its sender's signature: a recipient that cannot open one
        # may then leave the sender's mask out (it is provably corrupt), and a bad signature
        # at a recipient can only mean a lying server. The copy judges blames and checks
        # the shares holders reveal at unmasking against the signed commitments.
        cfg = self.config
        for v, share in msg.sealed_shares.items():
            payload = tr.share_signature_payload(
                cfg.round_id,
                self.facts.transcript,
                sender,
                v,
                share.ciphertext,
                share.key_share_commitment,
                share.self_share_commitment,
            )
            verify_signature(
                cfg.identities[sender], payload, share.signature, signer=f"client {sender}"
            )
        self.facts.uploaded[sender] = msg.sealed_shares

    def close(self) -> tuple[dict[int, Message], _State]:
        # A client left with fewer than t sharing neighbours could never be unmasked:
        # leave it (and its shares) out now, before anyone masks with it.
        sharers = active_after_pruning(self.facts.graph, self.received, self.config.threshold)
        self.require(len(sharers), "share keys")
        out: dict[int, Message] = {}
        for v in sorted(sharers):
            bundle = {
                u: self.received[u].sealed_shares[v]  # type: ignore[attr-defined]
                for u in self.facts.graph.neighbours(v)
                if u in sharers
            }
            out[v] = ShareBundle(self.config.round_id, bundle)
        return out, _CollectMaskedInputs(self.config, sharers, self.facts)


class _CollectMaskedInputs(_State):
    phase = Phase.MASKED_INPUT
    accepts = MaskedInput
    #: Defaults for subclasses that sum elsewhere (crypto/striped_server.py): no streams.
    streams: Mapping[int, _InputStream] = types.MappingProxyType({})
    poisoned: str | None = None

    def __init__(self, config: RoundConfig, expected: frozenset[int], facts: _Facts) -> None:
        super().__init__(config, expected)
        self.facts = facts
        self.total = np.zeros(config.vector_length, dtype=np.uint32)
        #: Masked inputs arriving in ranges (:meth:`SecAggServer.begin_masked_input`).
        self.streams: dict[int, _InputStream] = {}
        #: Why ``total`` can no longer be trusted (an undo journal came back altered).
        self.poisoned = None

    def receive(self, sender: int, msg: Message) -> None:
        super().receive(sender, msg)
        assert isinstance(msg, MaskedInput)
        mod_add_bytes_into(self.total, msg.vector, 1)  # the buffer is viewed, not copied
        self._count(sender)

    def _count(self, sender: int) -> None:
        """``sender``'s vector is in ``total``: record its judged blames, make it count."""
        for v, (record, mask_key) in self._judged.items():
            self.facts.blames.append(record)
            self.facts.unmasked_pairs[(sender, v)] = mask_key
            self.facts.excluded.add(v)
        self.received[sender] = None  # keep O(d): drop the vector, remember the sender

    def check(self, sender: int, msg: Message) -> None:
        assert isinstance(msg, MaskedInput)
        if sender in self.streams:
            raise DuplicateMessageError(f"client {sender} is already streaming its masked input")
        self._check_not_excluded(sender)
        expected_bytes = 4 * self.config.vector_length
        if len(msg.vector) != expected_bytes:
            raise MalformedMessageError(
                f"client {sender} sent {len(msg.vector)} bytes; the round expects {expected_bytes}"
            )
        # Judge every blame before anything counts: one false blame refuses the message.
        self._judged = {v: self._judge(sender, v, blame) for v, blame in msg.blames.items()}

    def _check_not_excluded(self, sender: int) -> None:
        if sender in self.facts.excluded:
            raise ExcludedSenderError(
                f"client {sender} is excluded from this round: a neighbour proved that it "
                "sent a sealed share that does not open"
            )

    # ------------------------------------------------ a masked input streamed in ranges

    def begin(self, sender: int) -> None:
        """Open ``sender``'s stream: an expected sender, not excluded, not in yet, once."""
        if sender not in self.expected:
            raise UnknownSenderError(f"client {sender} is not expected in phase {self.phase.name}")
        if sender in self.received or sender in self.streams:
            raise DuplicateMessageError(f"client {sender} already sent its {MaskedInput.TYPE}")
        self._check_not_excluded(sender)
        self.streams[sender] = _InputStream()

    def add(self, sender: int, offset_words: int, data: bytes | bytearray | memoryview) -> None:
        """Add the next range of ``sender``'s vector into ``total``; a bad range undoes the
        stream (nothing of a refused stream stays in the sum) and raises."""
        stream = self._stream(sender)
        view = memoryview(data).cast("B")
        words = len(view) // 4
        fault = None
        if len(view) % 4:
            fault = f"a range of {len(view)} bytes is not whole 4-byte words"
        elif offset_words != stream.next_word:
            fault = f"a range at word {offset_words}, the next one is at word {stream.next_word}"
        elif not words or stream.next_word + words > self.config.vector_length:
            fault = (
                f"a range of {words} words at word {offset_words} in a vector of "
                f"{self.config.vector_length}"
            )
        if fault is not None:
            self.abort(sender)
            raise MalformedMessageError(f"client {sender}'s masked input: {fault}; undone")
        try:
            stream.record(view)  # journal first: whatever is in total can be taken back out
        except OSError:
            self.abort(sender)
            raise
        mod_add_bytes_into(self.total[offset_words : offset_words + words], view, 1)
        stream.next_word += words

    def finish(self, sender: int, blames: Mapping[int, Blame]) -> None:
        """``sender``'s stream counts as a whole :meth:`receive` would; refused (and undone)
        unless every word arrived, the sender is still not excluded and every blame holds."""
        stream = self._stream(sender)
        try:
            if stream.next_word != self.config.vector_length:
                raise MalformedMessageError(
                    f"client {sender}'s masked input ended at word {stream.next_word} of "
                    f"{self.config.vector_length}; undone"
                )
            self._check_not_excluded(sender)  # a neighbour's proven blame may have come since
            self._judged = {v: self._judge(sender, v, blame) for v, blame in blames.items()}
        except SecAggError:
            self.abort(sender)
            raise
        del self.streams[sender]
        stream.close()
        self._count(sender)

    def abort(self, sender: int) -> bool:
        """Take ``sender``'s open stream back out of ``total`` (exact in Z_2^32); False if
        it has none. The journal is checked against the digest kept in memory: if the bytes
        read back differ, ``total`` is wrong and the round can only abort (:meth:`close`)."""
        stream = self.streams.pop(sender, None)
        if stream is None:
            return False
        try:
            if not stream.undo(self.total):
                self.poisoned = (
                    f"client {sender}'s streamed masked input could not be undone exactly "
                    "(its journal changed): the sum is unusable and the round is aborted"
                )
        finally:
            stream.close()
        return True

    def _stream(self, sender: int) -> _InputStream:
        stream = self.streams.get(sender)
        if stream is None:
            raise OutOfPhaseError(f"client {sender} has no masked input being streamed")
        return stream

    def _judge(self, accuser: int, accused: int, blame: Blame) -> tuple[BlameRecord, bytes]:
        """The judged record and the pair's proven mask key, or :class:`BlameRefusedError`.

        Nothing is taken on the accuser's word: the share is the very one the accused
        uploaded (its signature was checked then), and the pair's two X25519 secrets are
        proven (:mod:`crypto._primitives.dh_proof`), so the server derives the share key
        and opens the share itself, and removes the accused's half of the left-out mask
        with the true mask key. The share is bad or the blame is false: no third case.
        """
        cfg, facts = self.config, self.facts
        if accused not in facts.graph.neighbours(accuser) or accused not in self.expected:
            raise BlameRefusedError(f"client {accuser} blames {accused}, who sent it no share")
        share = blame.share
        if facts.uploaded.get(accused, {}).get(accuser) != share:
            raise BlameRefusedError(
                f"client {accuser} blames client {accused} for a share it never uploaded"
            )
        accuser_keys, accused_keys = facts.keys[accuser], facts.keys[accused]

        def secret(proof: bytes, prover_public: bytes, peer_public: bytes, which: bytes) -> bytes:
            context = tr.proof_context(cfg.round_id, facts.transcript, accuser, accused, which)
            try:
                return proven_secret(proof, prover_public, peer_public, context)
            except MalformedMessageError:
                raise BlameRefusedError(
                    f"client {accuser}'s blame of client {accused}: the proof of the pair's "
                    f"{which.decode()} key does not verify"
                ) from None

        share_key = tr.share_key(
            secret(
                blame.cipher_proof,
                accuser_keys.cipher_public,
                accused_keys.cipher_public,
                tr.CIPHER_PAIR,
            ),
            cfg.round_id,
            accuser,
            accused,
        )
        mask_key = tr.pairwise_mask_key(
            secret(
                blame.mask_proof, accuser_keys.mask_public, accused_keys.mask_public, tr.MASK_PAIR
            ),
            cfg.round_id,
            accuser,
            accused,
        )
        why = _fault_in_share(cfg.round_id, share_key, accused, accuser, share)
        if why is None:
            raise BlameRefusedError(
                f"client {accuser} blames client {accused}, but the share opens under the "
                "proven key and matches its commitments: a false blame"
            )
        return BlameRecord(accused, accuser, why), mask_key

    def close(self) -> tuple[dict[int, Message], _State]:
        for sender in sorted(self.streams):  # incomplete or never finished: not survivors
            self.abort(sender)
        if self.poisoned is not None:
            raise ReconstructionError(self.poisoned)
        survivors = tuple(sorted(self.received))
        self.require(len(survivors), "masked input")
        out: dict[int, Message] = {
            u: SurvivorList(self.config.round_id, survivors) for u in survivors
        }
        nxt = _CollectSignatures(
            self.config, frozenset(survivors), self.facts, self.expected, self.total
        )
        return out, nxt


class _InputStream:
    """One sender's masked input while it arrives: the next word expected, and a journal
    of every byte already added into the running sum, so an aborted stream can be
    subtracted back exactly. Memory stays O(1) per stream: the journal is an unlinked
    temporary file (gone when closed or when the process dies) holding only what the
    server is allowed to see anyway (a masked vector); a BLAKE2b digest kept in memory
    detects a journal altered on disk, so a wrong undo is never silent."""

    def __init__(self) -> None:
        self.next_word = 0
        self.journal = tempfile.TemporaryFile(prefix="sealagg-masked-")  # noqa: SIM115 - closed by close()
        self.digest = hashlib.blake2b(digest_size=32)

    def record(self, view: memoryview) -> None:
        self.journal.write(view)
        self.digest.update(view)

    def undo(self, total: np.ndarray) -> bool:
        """Subtract what was added from ``total``; False if the journal was altered."""
        self.journal.flush()
        self.journal.seek(0)
        check = hashlib.blake2b(digest_size=32)
        word = 0
        while word < self.next_word:
            block = self.journal.read(min(UNDO_BLOCK_BYTES, 4 * (self.next_word - word)))
            if not block or len(block) % 4:
                return False
            check.update(block)
            mod_add_bytes_into(total[word : word + len(block) // 4], block, -1)
            word += len(block) // 4
        return hmac.compare_digest(check.digest(), self.digest.digest())

    def close(self) -> None:
        self.journal.close()


def _fault_in_share(
    round_id: bytes, share_key: bytes, sender: int, recipient: int, share: SignedShare
) -> str | None:
    """What is wrong with a signed share under the pair's true key, or None if nothing."""
    try:
        plain = open_sealed(
            share_key, share.ciphertext, tr.share_associated_data(round_id, sender, recipient)
        )
    except DecryptionError:
        return "its signed sealed share does not decrypt under the pair's proven key"
    header = tr.SHARE_PLAINTEXT_HEADER
    if len(plain) != header.size + 2 * SHARE_BYTES or (
        header.unpack_from(plain) != (sender, recipient)
    ):
        return "its signed sealed share is malformed"
    body = plain[header.size :]
    for which, value, commitment in (
        (tr.KEY_SHARE, body[:SHARE_BYTES], share.key_share_commitment),
        (tr.SELF_SHARE, body[SHARE_BYTES:], share.self_share_commitment),
    ):
        if tr.share_commitment(round_id, sender, recipient, which, value) != commitment:
            return "its signed sealed share does not match the commitments it signed"
    return None


class _CollectSignatures(_State):
    phase = Phase.CONSISTENCY_CHECK
    accepts = ConsistencySignature

    def __init__(
        self,
        config: RoundConfig,
        survivors: frozenset[int],
        facts: _Facts,
        sharers: frozenset[int],
        total: np.ndarray,
    ) -> None:
        super().__init__(config, survivors)
        self.facts = facts
        self.sharers = sharers
        self.total = total
        self.survivors = tuple(sorted(survivors))
        self.survivors_blob = tr.encode_ids(self.survivors)

    def check(self, sender: int, msg: Message) -> None:
        assert isinstance(msg, ConsistencySignature)
        payload = tr.survivors_payload(
            self.config.round_id, self.facts.transcript, sender, self.survivors_blob
        )
        verify_signature(
            self.config.identities[sender], payload, msg.signature, signer=f"client {sender}"
        )

    def close(self) -> tuple[dict[int, Message], _State]:
        signatures = {u: m.signature for u, m in self.received.items()}  # type: ignore[attr-defined]
        self.require(len(signatures), "consistency check")
        dropped = tuple(sorted(self.sharers - set(self.survivors)))
        shown = signatures
        committee, sizing = self.facts.committee, self.config.committee_sizing
        if committee is not None and sizing is not None:
            # Clients check only committee signatures (crypto.committee): send only those.
            shown = {u: sig for u, sig in signatures.items() if u in committee}
            if len(shown) < sizing.quorum:
                raise BelowThresholdError(
                    f"consistency check: {len(shown)} committee members signed, at least "
                    f"{sizing.quorum} of {sizing.size} required"
                )
        request = UnmaskRequest(self.config.round_id, self.survivors, shown, dropped)
        out: dict[int, Message] = {u: request for u in sorted(signatures)}
        nxt = _CollectUnmaskShares(
            self.config, frozenset(signatures), self.facts, self.survivors, dropped, self.total
        )
        return out, nxt


class _CollectUnmaskShares(_State):
    phase = Phase.UNMASKING
    accepts = UnmaskShares

    def __init__(
        self,
        config: RoundConfig,
        responders: frozenset[int],
        facts: _Facts,
        survivors: tuple[int, ...],
        dropped: tuple[int, ...],
        total: np.ndarray,
    ) -> None:
        super().__init__(config, responders)
        self.facts = facts
        self.survivors = survivors
        self.dropped = dropped
        self.total = total

    def receive(self, sender: int, msg: Message) -> None:
        super().receive(sender, msg)
        self.received[sender] = self._checked  # only the shares that match their commitments

    def check(self, sender: int, msg: Message) -> None:
        assert isinstance(msg, UnmaskShares)
        mine = set(self.facts.graph.neighbours(sender))
        if not set(msg.self_mask_shares) <= mine & set(self.survivors):
            raise MalformedMessageError(f"client {sender} sent self-mask shares it cannot hold")
        if not set(msg.mask_key_shares) <= mine & set(self.dropped):
            raise MalformedMessageError(f"client {sender} sent mask-key shares it cannot hold")
        self._checked = UnmaskShares(
            msg.round_id,
            self._matching(sender, msg.self_mask_shares, tr.SELF_SHARE),
            self._matching(sender, msg.mask_key_shares, tr.KEY_SHARE),
        )

    def _matching(self, holder: int, shares: Mapping[int, bytes], which: bytes) -> dict[int, bytes]:
        """The shares that are what their owner committed to; a lie is recorded by name.

        An honest holder keeps only shares that matched the owner's signed commitments
        when they arrived (else it blamed the owner), so a mismatch now is the holder's
        own doing: proven, and the share is left out of every reconstruction.
        """
        round_id, uploaded = self.config.round_id, self.facts.uploaded
        good = {}
        for owner, share in shares.items():
            signed = uploaded.get(owner, {}).get(holder)
            committed = getattr(
                signed,
                "self_share_commitment" if which == tr.SELF_SHARE else ("key_share_commitment"),
                None,
            )
            if committed == tr.share_commitment(round_id, owner, holder, which, share):
                good[owner] = share
                continue
            what = "self-mask seed" if which == tr.SELF_SHARE else "mask key"
            self.facts.blames.append(
                BlameRecord(
                    holder,
                    owner,
                    f"it revealed a share of client {owner}'s {what} that does not match "
                    f"client {owner}'s signed commitment",
                )
            )
            self.facts.excluded.add(holder)
        return good

    def close(self) -> tuple[dict[int, Message], AggregateResult]:
        total = self.total.copy()
        apply_masks(total, self.masks_to_remove())
        return {}, self.result_with(total)

    def result_with(self, total: np.ndarray) -> AggregateResult:
        """The round's result around ``total`` (the unmasked sum, or an empty array when
        stripes hold the sum: :mod:`crypto.striped_server`)."""
        cfg, survivors = self.config, set(self.survivors)
        return AggregateResult(
            total=total,
            survivors=self.survivors,
            dropped_before_masking=tuple(
                sorted(set(cfg.identities) - set(self.facts.keys) - survivors)
            ),
            dropped_after_masking=self.dropped,
        )

    def masks_to_remove(self) -> list[tuple[bytes, int]]:
        """Every (mask key, sign) to apply to the masked sum to unmask it: each survivor's
        self mask, and each survivor's pairwise mask with a dropped peer (rebuilt from the
        peer's mask key), never both for one client. Rebuilding raises (the round aborts)
        when too few good shares arrived."""
        cfg, facts = self.config, self.facts
        round_id = cfg.round_id
        survivors = set(self.survivors)
        unmasked = facts.unmasked_pairs
        masks = [
            (tr.self_mask_key(self._recover_self_seed(u), round_id), -1) for u in self.survivors
        ]
        for v in self.dropped:
            # Survivors that added a mask with v (a blamer of v added none).
            users = [
                w for w in facts.graph.neighbours(v) if w in survivors and (w, v) not in unmasked
            ]
            if not users:
                continue
            key = self._recover_mask_key(v)
            for w in users:
                secret = key.exchange(facts.keys[w].mask_public)
                # w added sign(w, v)·PRG; remove it.
                masks.append(
                    (tr.pairwise_mask_key(secret, round_id, w, v), -tr.pairwise_sign(w, v))
                )
        for (u, v), mask_key in unmasked.items():
            # u left its mask with v out; if v survived and did add its half, remove that.
            if u in survivors and v in survivors and (v, u) not in unmasked:
                masks.append((mask_key, -tr.pairwise_sign(v, u)))
        return masks

    def _shares_for(self, owner: int, field: str) -> dict[int, bytes]:
        return {
            holder: getattr(msg, field)[owner]
            for holder, msg in self.received.items()
            if owner in getattr(msg, field)
        }

    def _reconstruct(
        self, owner: int, field: str, what: str, accept: Callable[[bytes], bool]
    ) -> bytes:
        """Rebuild ``owner``'s secret and accept it only if its owner's signed data agrees.

        Exactly t shares determine *some* secret whatever their values, so one altered
        share would go unnoticed without the check; with more than t, subsets of t are
        tried until one rebuilds the committed secret (a bad holder is routed around).
        None does: the round aborts, and no sum is released.
        """
        shares = self._shares_for(owner, field)
        t = self.config.threshold
        if len(shares) < t:
            raise BelowThresholdError(
                f"only {len(shares)} shares for client {owner}; threshold {t}: "
                "the round is aborted and no partial sum is released"
            )
        try:
            secret = combine_shares(shares, t, SECRET_BYTES)
            if accept(secret):
                return secret
        except SecAggError:
            pass
        subsets = itertools.islice(
            itertools.combinations(sorted(shares), t), MAX_RECONSTRUCTION_ATTEMPTS
        )
        for subset in subsets if len(shares) > t else ():
            try:
                secret = combine_shares({x: shares[x] for x in subset}, t, SECRET_BYTES)
            except SecAggError:
                continue
            if accept(secret):
                return secret
        raise ReconstructionError(
            f"the {len(shares)} shares of client {owner}'s {what} do not rebuild the secret "
            "it committed to: a holder sent a bad share; the round is aborted and no sum "
            "is released"
        )

    def _recover_self_seed(self, owner: int) -> bytes:
        commitment = self.facts.keys[owner].seed_commitment
        round_id = self.config.round_id
        return self._reconstruct(
            owner,
            "self_mask_shares",
            "self-mask seed",
            lambda seed: tr.seed_matches(commitment, round_id, owner, seed),
        )

    def _recover_mask_key(self, owner: int) -> AgreementKey:
        advertised = self.facts.keys[owner].mask_public

        def matches(raw: bytes) -> bool:
            return AgreementKey.from_private_bytes(raw).public_bytes == advertised

        return AgreementKey.from_private_bytes(
            self._reconstruct(owner, "mask_key_shares", "mask key", matches)
        )


class SecAggServer:
    """The aggregator's part in one round: receive messages, close phases, unmask."""

    def __init__(self, config: RoundConfig) -> None:
        self.config = config
        self._state: _State | None = _CollectKeys(config, frozenset(config.identities))
        self._facts: _Facts | None = None
        self._result: AggregateResult | None = None
        self._error: SecAggError | None = None
        # Streamed ranges may arrive on the event loop while a phase closes in a worker
        # thread: one lock orders every change to the state (and to the running sum).
        self._lock = threading.RLock()

    @property
    def phase(self) -> Phase | None:
        """The phase now collecting messages; ``None`` once finished or aborted."""
        return self._state.phase if self._state is not None else None

    @property
    def waiting_for(self) -> frozenset[int]:
        """Clients expected in this phase that have not answered yet."""
        if self._state is None:
            return frozenset()
        waiting = self._state.expected - set(self._state.received)
        if isinstance(self._state, _CollectMaskedInputs):  # excluded: no upload is awaited
            waiting -= self._state.facts.excluded
        return waiting

    @property
    def transcript_hash(self) -> bytes | None:
        """The hash of the round transcript, once the key directory went out."""
        if self._facts is not None:
            return self._facts.transcript
        return self._state.transcript if isinstance(self._state, _CollectCoins) else None

    @property
    def graph(self) -> CommunicationGraph | None:
        """The round's graph, drawn from the transcript and every coin once all are revealed."""
        return self._facts.graph if self._facts is not None else None

    @property
    def blames(self) -> tuple[BlameRecord, ...]:
        """Every proven misbehaviour so far (each excluded its accused from the round)."""
        return tuple(self._facts.blames) if self._facts is not None else ()

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
        with self._lock:
            self._state.receive(sender, msg)

    # --------------------------------------------- a masked input streamed into the sum

    @property
    def streams_masked_inputs(self) -> bool:
        """True while masked inputs may be streamed into this process's running sum."""
        return type(self._state) is _CollectMaskedInputs

    def _collecting(self, sender: int) -> _CollectMaskedInputs:
        state = self._state
        if type(state) is not _CollectMaskedInputs:  # a striped server sums elsewhere
            raise OutOfPhaseError("no masked input is being collected into this server's sum")
        if sender not in self.config.identities:
            raise UnknownSenderError(f"client {sender} is not a participant of this round")
        return state

    def begin_masked_input(self, sender: int) -> None:
        """Open ``sender``'s masked input, to arrive in ranges (no whole message held).

        Security: the same gate as :meth:`receive` (a participant, expected in this phase,
        not excluded, once: a second stream or a whole message while one is open is a
        duplicate); ``sender`` comes from the transport. Nothing counts until
        :meth:`finish_masked_input`; the caller checked the message's prefix (type, round
        id, vector length) before calling this, as :func:`crypto.messages.masked_input_view`
        does for a whole message.
        """
        with self._lock:
            self._collecting(sender).begin(sender)

    def add_masked_range(
        self, sender: int, offset_words: int, data: bytes | bytearray | memoryview
    ) -> None:
        """Add words ``offset_words ..`` of ``sender``'s masked vector (little-endian uint32)
        into the running sum at once, mod 2^32.

        Ranges come in order, without gaps or overlap, within the vector: anything else is
        refused *and the stream undone*, so a refused stream never leaves a partial vector
        in the sum. Adding before the end is safe because addition in Z_2^32 is exactly
        invertible: an aborted stream is subtracted back (:meth:`abort_masked_input`).
        """
        with self._lock:
            self._collecting(sender).add(sender, offset_words, data)

    def finish_masked_input(self, sender: int, blames: Mapping[int, Blame] | None = None) -> None:
        """Every word arrived: ``sender`` counts exactly as if :meth:`receive` had taken the
        whole message (same checks on ``blames``, same state, a survivor if the phase
        closes). Refused, and the stream undone, if a word is missing, the sender was
        excluded meanwhile, or a blame does not hold."""
        with self._lock:
            self._collecting(sender).finish(sender, blames or {})

    def abort_masked_input(self, sender: int) -> bool:
        """Undo ``sender``'s unfinished stream: the sum is as if it never came and ``sender``
        is not a survivor (it may stream again). False if there is nothing to undo (never
        begun, finished, already undone, or the phase closed, which undoes every open one)."""
        with self._lock:
            state = self._state
            if type(state) is not _CollectMaskedInputs:
                return False
            return state.abort(sender)

    def close_phase(self) -> dict[int, Message]:
        """End the current phase (all in, or deadline): the messages to send to each client.

        Raises :class:`BelowThresholdError` (and aborts the round) when too few remain.
        Closing the masked-input phase undoes every stream not finished.
        """
        with self._lock:
            return self._close_phase()

    def _close_phase(self) -> dict[int, Message]:
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
            self._facts = getattr(nxt, "facts", self._facts)
        return out
