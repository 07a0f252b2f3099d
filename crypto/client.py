"""The client side of pairwise-mask secure aggregation, one small state per phase.

Transport-free: each ``receive_*`` call takes the server's message for the
current phase and returns the client's reply. A message for another phase or
round is refused (:class:`OutOfPhaseError`, :class:`ReplayedMessageError`) and
leaves the state unchanged; bad *contents* (a forged signature, an inconsistent
survivor list, a request for both secrets of one peer) abort the client's part
in the round for good. Secrets move from one state to the next and are dropped
when no longer needed; nothing is kept in a shared bag of fields.

Against a malicious server (issue 17): the client hashes the whole transcript
(parameters and every advertised key) as soon as the key directory arrives, claims it in
its :class:`~sealagg.crypto.ledger.TranscriptLedger` (no transcript, and no round id,
twice), reveals its graph coin only then, draws the graph from every committed coin
(:mod:`crypto.coins`; a complete graph has no seed to steer, so its rounds skip the
reveal, decided by the round parameters alone), and binds its consistency signature to
the transcript. A neighbour's share that does not open, or does not match the
neighbour's signed commitments, is not a reason to abort: the client leaves that
neighbour's mask out and hands the server signed evidence with proofs of the pair's keys
(a blame)."""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping

import numpy as np

from sealagg.crypto import _transcript as tr
from sealagg.crypto import coins
from sealagg.crypto._primitives.aead import open_sealed, seal
from sealagg.crypto._primitives.agreement import AgreementKey
from sealagg.crypto._primitives.dh_proof import prove_secret
from sealagg.crypto._primitives.prg import SEED_BYTES, apply_masks
from sealagg.crypto._primitives.shamir import split_secrets
from sealagg.crypto._primitives.signing import IdentityKey, verify_signature
from sealagg.crypto.config import RoundConfig, active_after_pruning
from sealagg.crypto.errors import (
    BadSignatureError,
    BaseVersionRefusedError,
    BelowThresholdError,
    BothSharesRequestedError,
    DecryptionError,
    InconsistentSurvivorsError,
    InvalidPublicKeyError,
    MalformedMessageError,
    OutOfPhaseError,
    ReplayedMessageError,
    SecAggError,
    UnknownSenderError,
)
from sealagg.crypto.graph import CommunicationGraph
from sealagg.crypto.ledger import InMemoryTranscriptLedger, TranscriptLedger
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
    RevealCoin,
    ShareBundle,
    ShareKeys,
    SignedShare,
    SurvivorList,
    UnmaskRequest,
    UnmaskShares,
)


class _Context:
    """Public facts about the round, as seen by one client (no secrets)."""

    def __init__(self, config: RoundConfig, client_id: int, ledger: TranscriptLedger) -> None:
        if client_id not in config.identities:
            raise UnknownSenderError(f"client {client_id} is not a participant of this round")
        self.config = config
        self.me = client_id
        self.ledger = ledger


class _Round:
    """What the key directory fixed: the transcript hash and this client's neighbours,
    and what the coins fixed: the signing committee (``None``: the full quorum)."""

    def __init__(
        self,
        transcript: bytes,
        neighbours: frozenset[int],
        committee: frozenset[int] | None = None,
    ) -> None:
        self.transcript = transcript
        self.neighbours = neighbours
        self.committee = committee


class _State:
    """Refuses every event; each concrete state accepts only its own."""

    name = "base"

    def __init__(self, ctx: _Context) -> None:
        self.ctx = ctx

    def _refuse(self, event: str) -> OutOfPhaseError:
        return OutOfPhaseError(
            f"client {self.ctx.me}: {event} is not accepted in state {self.name}"
        )

    def advertise(self) -> tuple[Message, _State]:
        raise self._refuse("advertise")

    def on_key_directory(self, msg: KeyDirectory) -> tuple[Message, _State]:
        raise self._refuse("key directory")

    def on_coin_directory(self, msg: CoinDirectory) -> tuple[Message, _State]:
        raise self._refuse("coin directory")

    def on_share_bundle(self, msg: ShareBundle, x: np.ndarray) -> tuple[Message, _State]:
        raise self._refuse("share bundle")

    def on_survivor_list(self, msg: SurvivorList) -> tuple[Message, _State]:
        raise self._refuse("survivor list")

    def on_unmask_request(self, msg: UnmaskRequest) -> tuple[Message, _State]:
        raise self._refuse("unmask request")


class _AdvertiseKeys(_State):
    name = "advertise_keys"

    def __init__(self, ctx: _Context, identity: IdentityKey) -> None:
        super().__init__(ctx)
        self._identity = identity

    def advertise(self) -> tuple[Message, _State]:
        cfg = self.ctx.config
        cipher_key, mask_key = AgreementKey.generate(), AgreementKey.generate()
        self_seed = os.urandom(SEED_BYTES)
        coin = coins.draw_coin()
        commitment = tr.seed_commitment(cfg.round_id, self.ctx.me, self_seed)
        coin_commitment = coins.coin_commitment(cfg.round_id, self.ctx.me, coin)
        payload = tr.advertise_payload(
            cfg.round_id,
            self.ctx.me,
            cipher_key.public_bytes,
            mask_key.public_bytes,
            commitment,
            coin_commitment,
            tr.advertise_binding(cfg, self.ctx.me),
        )
        keys = PeerKeys(
            cipher_key.public_bytes,
            mask_key.public_bytes,
            commitment,
            coin_commitment,
            self._identity.sign(payload),
        )
        secrets = _Secrets(self._identity, cipher_key, mask_key, self_seed)
        return AdvertiseKeys(cfg.round_id, keys), _AwaitKeyDirectory(self.ctx, secrets, coin, keys)


class _Secrets:
    """The client's secrets for this round, handed from state to state."""

    def __init__(
        self,
        identity: IdentityKey,
        cipher_key: AgreementKey,
        mask_key: AgreementKey,
        self_seed: bytes,
    ) -> None:
        self.identity = identity
        self.cipher_key = cipher_key
        self.mask_key = mask_key
        self.self_seed = self_seed


class _AwaitKeyDirectory(_State):
    name = "await_key_directory"

    def __init__(self, ctx: _Context, secrets: _Secrets, coin: bytes, own: PeerKeys) -> None:
        super().__init__(ctx)
        self._secrets = secrets
        self._coin = coin
        self._own = own

    def on_key_directory(self, msg: KeyDirectory) -> tuple[Message, _State]:
        ctx, cfg = self.ctx, self.ctx.config
        advertised = dict(msg.keys)
        unknown = set(advertised) - set(cfg.identities)
        if unknown:
            raise UnknownSenderError(f"key directory lists non-participants {sorted(unknown)}")
        if advertised.get(ctx.me) != self._own:
            raise ReplayedMessageError(
                "the key directory does not carry the keys this client advertised in this round"
            )
        transcript = tr.transcript_hash(cfg, advertised)
        # Claimed before the coin leaves: one reveal per round id, and the reveal budget.
        ctx.ledger.claim(cfg.round_id, transcript)  # TranscriptReusedError, RevealBudgetError
        if not cfg.reveals_coins:  # complete graph: no seed to steer, no reveal (crypto.coins)
            return _share_keys(
                ctx, self._secrets, transcript, advertised, cfg.graph_for(transcript)
            )
        nxt = _AwaitCoins(ctx, self._secrets, transcript, advertised)
        return RevealCoin(cfg.round_id, self._coin), nxt


class _AwaitCoins(_State):
    name = "await_coins"

    def __init__(
        self,
        ctx: _Context,
        secrets: _Secrets,
        transcript: bytes,
        advertised: Mapping[int, PeerKeys],
    ) -> None:
        super().__init__(ctx)
        self._secrets = secrets
        self._transcript = transcript
        self._advertised = advertised

    def on_coin_directory(self, msg: CoinDirectory) -> tuple[Message, _State]:
        cfg, advertised = self.ctx.config, self._advertised
        commitments = {u: k.coin_commitment for u, k in advertised.items()}
        seed = coins.graph_seed(cfg.round_id, self._transcript, commitments, msg.coins)
        graph = cfg.graph_for(seed)
        committee = cfg.committee_for(seed)  # derived here, never taken from the server
        return _share_keys(self.ctx, self._secrets, self._transcript, advertised, graph, committee)


def _share_keys(
    ctx: _Context,
    own: _Secrets,
    transcript: bytes,
    advertised: Mapping[int, PeerKeys],
    graph: CommunicationGraph,
    committee: frozenset[int] | None = None,
) -> tuple[Message, _State]:
    """Seal and sign this client's shares to its active neighbours in ``graph``."""
    cfg = ctx.config
    active = active_after_pruning(graph, advertised, cfg.threshold)
    if ctx.me not in active:
        raise BelowThresholdError(
            f"fewer than {cfg.threshold} of this client's neighbours advertised keys"
        )
    holders = sorted(v for v in graph.neighbours(ctx.me) if v in active)
    # Only neighbours' keys are used; a forged non-neighbour entry changes the
    # transcript hash, which no honest client's consistency signature then covers.
    peers = {v: advertised[v] for v in holders}
    for v, keys in peers.items():
        tr.check_advertisement(cfg, v, keys, check_keys=False)
    # Both key agreements per neighbour now: a low-order key raises
    # InvalidPublicKeyError here (the exchange is the check, at no extra cost).
    share_keys = {
        v: tr.share_key(_agree(own.cipher_key, peers[v].cipher_public, v), cfg.round_id, ctx.me, v)
        for v in holders
    }
    mask_keys = {
        v: tr.pairwise_mask_key(
            _agree(own.mask_key, peers[v].mask_public, v), cfg.round_id, ctx.me, v
        )
        for v in holders
    }
    shares = split_secrets(
        [own.mask_key.export_private_bytes_for_sharing(), own.self_seed],
        cfg.threshold,
        holders,
    )
    sealed = {}
    for v, pair in zip(holders, shares, strict=True):
        ciphertext = seal(
            share_keys[v],
            tr.share_plaintext(ctx.me, v, pair[0], pair[1]),
            tr.share_associated_data(cfg.round_id, ctx.me, v),
        )
        key_commit = tr.share_commitment(cfg.round_id, ctx.me, v, tr.KEY_SHARE, pair[0])
        self_commit = tr.share_commitment(cfg.round_id, ctx.me, v, tr.SELF_SHARE, pair[1])
        signature = own.identity.sign(
            tr.share_signature_payload(
                cfg.round_id, transcript, ctx.me, v, ciphertext, key_commit, self_commit
            )
        )
        sealed[v] = SignedShare(ciphertext, key_commit, self_commit, signature)
    rnd = _Round(transcript, frozenset(holders), committee)
    nxt = _AwaitShareBundle(ctx, rnd, own, peers, share_keys, mask_keys)
    return ShareKeys(cfg.round_id, sealed), nxt


def _agree(own: AgreementKey, public: bytes, owner: int) -> bytes:
    try:
        return own.exchange(public)
    except InvalidPublicKeyError:
        raise InvalidPublicKeyError(
            f"client {owner} advertised a low-order (or all-zero) X25519 public key"
        ) from None


class _AwaitShareBundle(_State):
    name = "await_share_bundle"

    def __init__(
        self,
        ctx: _Context,
        rnd: _Round,
        secrets: _Secrets,
        peers: Mapping[int, PeerKeys],
        share_keys: Mapping[int, bytes],
        mask_keys: Mapping[int, bytes],
    ) -> None:
        super().__init__(ctx)
        self._round = rnd
        self._secrets = secrets
        self._peers = peers
        self._share_keys = share_keys
        self._mask_keys = mask_keys

    def on_share_bundle(self, msg: ShareBundle, x: np.ndarray) -> tuple[Message, _State]:
        ctx, cfg = self.ctx, self.ctx.config
        senders = set(msg.sealed_shares)
        stray = senders - set(self._peers)
        if stray:
            raise UnknownSenderError(
                f"shares from clients without advertised keys: {sorted(stray)}"
            )
        if len(senders) < cfg.threshold:
            raise BelowThresholdError(
                f"only {len(senders)} neighbours shared keys; threshold is {cfg.threshold}"
            )
        held: dict[int, tuple[bytes, bytes]] = {}
        blamed: dict[int, SignedShare] = {}
        for v, share in msg.sealed_shares.items():
            try:  # a share that opens is v's: AEAD under the v-u key, AD naming both
                plain = open_sealed(
                    self._share_keys[v],
                    share.ciphertext,
                    tr.share_associated_data(cfg.round_id, v, ctx.me),
                )
                held[v] = _parse_share_plaintext(plain, v, ctx.me)
                _check_share_commitments(cfg.round_id, v, ctx.me, share, held[v])
            except (DecryptionError, MalformedMessageError):
                # Only a share v signed may cost v its mask with us: else a server could
                # spoil every share to a victim until it masked with nobody. The server
                # checks signatures at upload, so an unsigned one here means it lied.
                held.pop(v, None)
                payload = tr.share_signature_payload(
                    cfg.round_id,
                    self._round.transcript,
                    v,
                    ctx.me,
                    share.ciphertext,
                    share.key_share_commitment,
                    share.self_share_commitment,
                )
                verify_signature(cfg.identities[v], payload, share.signature, signer=f"client {v}")
                blamed[v] = share  # signed and bad: evidence against v, not a reason to abort
        mask_keys = self._mask_keys
        masks = [(tr.self_mask_key(self._secrets.self_seed, cfg.round_id), 1)]
        masks += [  # no mask with a blamed sender: the server may exclude it
            (mask_keys[v], tr.pairwise_sign(ctx.me, v)) for v in sorted(senders - set(blamed))
        ]
        y = x.astype("<u4", copy=True)
        apply_masks(y, masks)
        blames = {v: self._blame(v, s) for v, s in blamed.items()}
        nxt = _AwaitSurvivorList(ctx, self._round, self._secrets.identity, frozenset(senders), held)
        return MaskedInput(cfg.round_id, memoryview(y).cast("B"), blames), nxt

    def _blame(self, accused: int, share: SignedShare) -> Blame:
        """Evidence the server checks on its own: proofs of both pair secrets (a key the
        blamer merely stated could be a lie, and the server could not tell)."""
        cfg, me, own = self.ctx.config, self.ctx.me, self._secrets
        peer = self._peers[accused]
        transcript = self._round.transcript

        def proof(key: AgreementKey, public: bytes, which: bytes) -> bytes:
            context = tr.proof_context(cfg.round_id, transcript, me, accused, which)
            return prove_secret(key, public, context)

        return Blame(
            share,
            proof(own.cipher_key, peer.cipher_public, tr.CIPHER_PAIR),
            proof(own.mask_key, peer.mask_public, tr.MASK_PAIR),
        )


def _check_share_commitments(
    round_id: bytes, sender: int, recipient: int, share: SignedShare, pair: tuple[bytes, bytes]
) -> None:
    """Refuse shares that are not what their sender signed commitments to (a blame)."""
    for which, value, commitment in (
        (tr.KEY_SHARE, pair[0], share.key_share_commitment),
        (tr.SELF_SHARE, pair[1], share.self_share_commitment),
    ):
        expected = tr.share_commitment(round_id, sender, recipient, which, value)
        if not hmac.compare_digest(expected, commitment):
            raise MalformedMessageError(
                f"client {sender}'s share does not match the commitment it signed"
            )


def _parse_share_plaintext(plain: bytes, sender: int, recipient: int) -> tuple[bytes, bytes]:
    header = tr.SHARE_PLAINTEXT_HEADER
    if len(plain) != header.size + 2 * SHARE_BYTES:
        raise MalformedMessageError(f"share from client {sender} has the wrong length")
    if header.unpack_from(plain) != (sender, recipient):
        raise MalformedMessageError(f"share from client {sender} names other parties")
    body = plain[header.size :]
    return body[:SHARE_BYTES], body[SHARE_BYTES:]


class _AwaitSurvivorList(_State):
    name = "await_survivor_list"

    def __init__(
        self,
        ctx: _Context,
        rnd: _Round,
        identity: IdentityKey,
        sharers: frozenset[int],
        held: Mapping[int, tuple[bytes, bytes]],
    ) -> None:
        super().__init__(ctx)
        self._round = rnd
        self._identity = identity
        self._sharers = sharers
        self._held = held

    def on_survivor_list(self, msg: SurvivorList) -> tuple[Message, _State]:
        ctx, cfg = self.ctx, self.ctx.config
        survivors = frozenset(msg.survivors)
        if ctx.me not in survivors:
            raise InconsistentSurvivorsError("the survivor list omits this client")
        unknown = survivors - set(cfg.identities)
        if unknown:
            raise UnknownSenderError(f"survivor list names non-participants {sorted(unknown)}")
        phantom = (survivors & self._round.neighbours) - self._sharers
        if phantom:
            raise InconsistentSurvivorsError(
                f"neighbours {sorted(phantom)} listed as survivors never shared keys with us"
            )
        if len(survivors) < cfg.minimum_survivors:
            raise BelowThresholdError(
                f"{len(survivors)} survivors; at least {cfg.minimum_survivors} are required"
            )
        blob = tr.encode_ids(msg.survivors)
        signature = self._identity.sign(
            tr.survivors_payload(cfg.round_id, self._round.transcript, ctx.me, blob)
        )
        nxt = _AwaitUnmaskRequest(ctx, self._round, msg.survivors, self._held)
        return ConsistencySignature(cfg.round_id, signature), nxt


class _AwaitUnmaskRequest(_State):
    name = "await_unmask_request"

    def __init__(
        self,
        ctx: _Context,
        rnd: _Round,
        survivors: tuple[int, ...],
        held: Mapping[int, tuple[bytes, bytes]],
    ) -> None:
        super().__init__(ctx)
        self._round = rnd
        self._survivors = survivors
        self._held = held

    def on_unmask_request(self, msg: UnmaskRequest) -> tuple[Message, _State]:
        ctx, cfg = self.ctx, self.ctx.config
        both = set(msg.survivors) & set(msg.dropped)
        if both:
            raise BothSharesRequestedError(
                f"asked for both secrets of {sorted(both)}; an honest client reveals only one"
            )
        if msg.survivors != self._survivors:
            raise InconsistentSurvivorsError(
                "the unmask request's survivor list differs from the signed one"
            )
        signers = set(msg.signatures)
        if not signers <= set(self._survivors):
            raise InconsistentSurvivorsError("signatures from clients outside the survivor list")
        sizing, committee = cfg.committee_sizing, self._round.committee
        if sizing is not None and committee is not None:  # SecAgg+ with a signing committee
            self._check_committee(msg.signatures, committee, sizing.quorum)
        else:  # SecAgg, or no committee below the quorum: the full quorum, as before
            self._check_quorum(msg.signatures)
        survivors, dropped = set(self._survivors), set(msg.dropped)
        self_shares = {v: pair[1] for v, pair in self._held.items() if v in survivors}
        key_shares = {v: pair[0] for v, pair in self._held.items() if v in dropped}
        ctx.ledger.finish(cfg.round_id)  # the round counts as finished for the reveal budget
        return UnmaskShares(cfg.round_id, self_shares, key_shares), _Done(ctx)

    def _check_quorum(self, signatures: Mapping[int, bytes]) -> None:
        """Verify signatures in id order until a quorum of them cover our list.

        Security rests on a quorum (``minimum_survivors``) of clients having signed
        the very list we signed *in this very transcript* (the payload binds its hash,
        so a signature from an earlier round that reused the round id does not count);
        signatures beyond the quorum add nothing, so they are not checked. A bad one
        met on the way is evidence of a lying server.
        """
        cfg = self.ctx.config
        if len(signatures) < cfg.minimum_survivors:
            raise BelowThresholdError(
                f"{len(signatures)} survivors confirmed the list; {cfg.minimum_survivors} required"
            )
        blob = tr.encode_ids(self._survivors)
        for v in sorted(signatures)[: cfg.minimum_survivors]:
            payload = tr.survivors_payload(cfg.round_id, self._round.transcript, v, blob)
            try:
                verify_signature(cfg.identities[v], payload, signatures[v], signer=f"client {v}")
            except BadSignatureError:
                raise InconsistentSurvivorsError(
                    f"client {v} did not sign the survivor list this client signed in this "
                    "transcript: the server showed different lists, forged a signature or "
                    "replayed one from another round"
                ) from None

    def _check_committee(
        self, signatures: Mapping[int, bytes], committee: frozenset[int], quorum: int
    ) -> None:
        """Verify committee signatures in id order until ``q`` of them cover our list.

        The rule and its security argument: :mod:`crypto.committee`. In short, two lists
        that each gather ``q`` committee signatures in this transcript need ``2q - m``
        corrupt members of a committee the server did not choose (drawn from the coin-
        tossed graph seed; sized from the transcript-bound parameters so that happens
        with probability at most 2^-40). The list length (at least ``minimum_survivors``)
        was checked before this client signed, which keeps the graph's minimum-sum bound.
        Signatures from non-members add nothing and are not checked; a bad member
        signature met on the way, or fewer than ``q`` members, refuses the round.
        """
        cfg = self.ctx.config
        members = sorted(v for v in signatures if v in committee)
        if len(members) < quorum:
            raise InconsistentSurvivorsError(
                f"{len(members)} of the round's {len(committee)} committee members confirmed "
                f"the survivor list; {quorum} are required"
            )
        blob = tr.encode_ids(self._survivors)
        for v in members[:quorum]:
            payload = tr.survivors_payload(cfg.round_id, self._round.transcript, v, blob)
            try:
                verify_signature(cfg.identities[v], payload, signatures[v], signer=f"client {v}")
            except BadSignatureError:
                raise InconsistentSurvivorsError(
                    f"committee member {v} did not sign the survivor list this client signed "
                    "in this transcript: the server showed different lists, forged a "
                    "signature or replayed one from another round"
                ) from None


class _Done(_State):
    name = "done"


class _Aborted(_State):
    name = "aborted"

    def __init__(self, ctx: _Context, error: SecAggError) -> None:
        super().__init__(ctx)
        self.error = error

    def _refuse(self, event: str) -> OutOfPhaseError:
        return OutOfPhaseError(
            f"client {self.ctx.me} aborted the round ({self.error.reason.value})"
        )


class SecAggClient:
    """One client's part in one round; feed it the server's messages in order.

    ``ledger`` records the transcripts this client took part in; pass a durable one
    (the shim does) so a replayed round is refused across restarts. ``None`` gives a
    ledger private to this object, which protects nothing across rounds by itself;
    the transcript-bound consistency signatures still do.
    """

    def __init__(
        self,
        config: RoundConfig,
        client_id: int,
        identity: IdentityKey,
        *,
        ledger: TranscriptLedger | None = None,
        trained_on: int | None = None,
    ) -> None:
        """``trained_on``: in an asynchronous buffer's round, the model version this client
        trained on; the round must list exactly it as this client's base version
        (:class:`~crypto.errors.BaseVersionRefusedError` otherwise, before any key exists)."""
        if identity.verify_key_bytes != config.identities.get(client_id):
            raise UnknownSenderError(
                f"identity key does not match client {client_id}'s registration"
            )
        if (config.buffer is None) != (trained_on is None):
            raise BaseVersionRefusedError(
                "an asynchronous update goes only into a buffer's round, and a buffer's round "
                "takes only an update whose base version the client names; nothing was sent"
            )
        if config.buffer is not None and trained_on is not None:
            config.buffer.check_own(client_id, trained_on)
        self._ctx = _Context(
            config, client_id, ledger if ledger is not None else InMemoryTranscriptLedger()
        )
        self._state: _State = _AdvertiseKeys(self._ctx, identity)
        self._input: np.ndarray | None = None

    @property
    def client_id(self) -> int:
        return self._ctx.me

    @property
    def state(self) -> str:
        return self._state.name

    @property
    def abort_error(self) -> SecAggError | None:
        return self._state.error if isinstance(self._state, _Aborted) else None

    def set_input(self, quantized: np.ndarray) -> None:
        """The client's quantized vector in Z_(2^32), length ``vector_length``."""
        arr = np.asarray(quantized)
        if arr.dtype != np.uint32 or arr.shape != (self._ctx.config.vector_length,):
            raise MalformedMessageError(
                f"input must be uint32 of shape ({self._ctx.config.vector_length},), "
                f"got {arr.dtype} {arr.shape}"
            )
        self._input = arr

    def advertise_keys(self) -> AdvertiseKeys:
        return self._step(lambda s: s.advertise())  # type: ignore[return-value]

    def receive_key_directory(self, msg: KeyDirectory) -> RevealCoin | ShareKeys:
        """The coin reveal, or straight the shares when the graph is complete (no reveal)."""
        return self._step(lambda s: s.on_key_directory(msg), msg)  # type: ignore[return-value]

    def receive_coin_directory(self, msg: CoinDirectory) -> ShareKeys:
        return self._step(lambda s: s.on_coin_directory(msg), msg)  # type: ignore[return-value]

    def receive_share_bundle(self, msg: ShareBundle) -> MaskedInput:
        if self._input is None:
            raise OutOfPhaseError("set_input() must be called before the masked-input phase")
        x = self._input
        return self._step(lambda s: s.on_share_bundle(msg, x), msg)  # type: ignore[return-value]

    def receive_survivor_list(self, msg: SurvivorList) -> ConsistencySignature:
        return self._step(lambda s: s.on_survivor_list(msg), msg)  # type: ignore[return-value]

    def receive_unmask_request(self, msg: UnmaskRequest) -> UnmaskShares:
        reply = self._step(lambda s: s.on_unmask_request(msg), msg)
        self._input = None
        return reply  # type: ignore[return-value]

    def handle(self, msg: Message) -> Message:
        """Dispatch any server message by type (for transports that carry a union)."""
        handlers = {
            KeyDirectory: self.receive_key_directory,
            CoinDirectory: self.receive_coin_directory,
            ShareBundle: self.receive_share_bundle,
            SurvivorList: self.receive_survivor_list,
            UnmaskRequest: self.receive_unmask_request,
        }
        handler = handlers.get(type(msg))
        if handler is None:
            raise OutOfPhaseError(f"clients do not accept {type(msg).__name__} messages")
        return handler(msg)  # type: ignore[operator]

    def export_state(self, *, key: bytes, context: bytes = b"") -> bytes:
        """This round's state for the next phase, sealed under ``key`` and bound to the round
        id and ``context`` (:mod:`sealagg.crypto.client_state`; the quantized input is not
        part of it). For runtimes that keep no process between a round's messages."""
        from sealagg.crypto.client_state import export_client_state

        return export_client_state(self, key=key, context=context)

    @classmethod
    def import_state(
        cls,
        blob: bytes,
        *,
        key: bytes,
        round_id: bytes,
        context: bytes = b"",
        ledger: TranscriptLedger | None = None,
    ) -> SecAggClient:
        """The client :meth:`export_state` sealed; refuses another round's or a tampered state."""
        from sealagg.crypto.client_state import import_client_state

        return import_client_state(
            blob, key=key, round_id=round_id, context=context, ledger=ledger
        )

    def _step(self, event, msg: Message | None = None) -> Message:
        if msg is not None and msg.round_id != self._ctx.config.round_id:
            raise ReplayedMessageError(f"{msg.TYPE} belongs to another round")
        try:
            reply, self._state = event(self._state)
        except (OutOfPhaseError, ReplayedMessageError):
            raise
        except SecAggError as error:
            self._state = _Aborted(self._ctx, error)
            raise
        return reply
