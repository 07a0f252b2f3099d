"""Mode ``ckks``: the appliance sums CKKS ciphertexts under a public context it cannot decrypt.

Phases (each closes when its expected clients answered or its deadline passed):

``keys``             every party uploads a fresh X25519 key signed by its identity key; the
                     key holder's advert also carries (and signs) the public CKKS context.
                     The appliance refuses a context that holds a secret key.
``context``          the key holder receives the data owners' adverts and returns one secret
                     context sealed to each when the federation shares it (by default it does
                     not: no data owner holds the secret key).
``encrypted_input``  each data owner receives the key holder's signed advert and uploads
                     ⌈(d+1)/slots⌉ ciphertexts of [w·x, w], signed with its identity key over
                     the round, its index and name, the model version and the parameters; the
                     appliance checks signature and ciphertexts and keeps each upload.
``decrypt``          the appliance forwards every contributor's signed upload verbatim, one per
                     step (each step is no larger than the sum it replaces); the key holder
                     checks them against the roster, recomputes the homomorphic sum itself
                     from at least m distinct signed contributions, decrypts only that, once,
                     and returns [Σw·x, Σw]; the appliance divides by Σw and publishes.

Forwarding the ciphertexts themselves (not digests): a key holder cannot check that a sum
covers m data owners without the parts, and this mode is for small models. The cost is that
the key holder receives each individual ciphertext: it must be trusted with individual updates
(as it always had to be against a colluding appliance; TenSEAL has no threshold CKKS).

A bad upload is refused with a clear error and that client leaves the round; the round
continues for the others as long as at least m data owners contribute.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from sealagg.appliance.config import ApplianceConfig, DeadlinesSection
from sealagg.appliance.rounds import ActiveRound, Aggregate, Member, UploadRefusedError
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.crypto.ckks import (
    MAX_CONTEXT_BYTES,
    CkksAccumulator,
    CkksParameters,
    Contributor,
    check_ckks_round,
    estimate,
    input_limit,
    mean_from_sum,
)
from sealagg.crypto.ckks_keys import (
    MAX_SEALED_BYTES,
    SMALL_BYTES,
    Advert,
    bundle_message,
    contribution_message,
    read_advert,
    read_key_holder_reply,
    read_refusal,
    read_sealed,
    reply_limit,
    roster_message,
)
from sealagg.crypto.errors import BadSignatureError, CkksError, SecAggError

UPLOAD_KIND = "ckks"


@dataclasses.dataclass(frozen=True)
class CkksPlan:
    """Who holds the key, with which parameters; decided before the round opens."""

    params: CkksParameters
    key_holder: Member
    contributes: bool
    share_secret_key: bool
    max_error: float
    clip: float
    model_version: int
    #: m: the fewest data owners whose updates must be in a sum before it is decrypted.
    minimum: int

    @property
    def key_holder_index(self) -> int:
        return self.key_holder.index


class CkksRound(ActiveRound):
    """One CKKS round; holds only the public context and a running ciphertext sum."""

    phase_names = ("keys", "context", "encrypted_input", "decrypt")

    def __init__(
        self,
        number: int,
        round_id: bytes,
        members: list[Member],
        plan: CkksPlan,
        dimension: int,
    ) -> None:
        super().__init__(number, round_id, members)
        self.plan = plan
        self.dimension = dimension
        self.key_holder = plan.key_holder
        self.data_owners = {
            m.name for m in members if plan.contributes or m.name != plan.key_holder.name
        }
        self.adverts: dict[str, Advert] = {}
        self.accumulator: CkksAccumulator | None = None
        self.sealed: dict[int, bytes] = {}
        self.uploads: dict[str, bytes] = {}  # signed uploads, forwarded to the key holder
        self.contributors: tuple[str, ...] = ()
        self.refused: dict[str, str] = {}
        self.key_holder_refusal: str | None = None
        self._position = 0  # the contribution the key holder has been sent last
        self._acked = False
        self._weighted_sum: np.ndarray | None = None
        self._done = False

    def phase_deadlines(self, deadlines: DeadlinesSection) -> tuple[float, ...]:
        """Per-phase deadlines, mapped onto the masked modes' settings."""
        return (
            deadlines.advertise_keys,
            deadlines.share_keys,
            deadlines.masked_input,
            deadlines.unmasking,
        )

    def describe(self, start: pb.RoundStart) -> None:
        """The vector length ([w·x, w]) and the CKKS parameters, key holder included."""
        plan, params = self.plan, self.plan.params
        start.vector_length = self.dimension + 1
        start.ckks.CopyFrom(
            pb.CkksParams(
                poly_modulus_degree=params.poly_modulus_degree,
                coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
                scale_bits=params.scale_bits,
                key_holder_index=plan.key_holder_index,
                key_holder_contributes=plan.contributes,
                share_secret_key=plan.share_secret_key,
                max_error=plan.max_error,
            )
        )
        start.minimum_survivors = plan.minimum  # m: the key holder decrypts no smaller sum

    # ------------------------------------------------------------------------- uploads

    def upload_limit(self, header: pb.UploadHeader) -> int:
        if header.kind != UPLOAD_KIND:
            raise UploadRefusedError(
                "INVALID_ARGUMENT", f"ckks rounds take {UPLOAD_KIND!r} uploads, not {header.kind!r}"
            )
        return [
            MAX_CONTEXT_BYTES + SMALL_BYTES,
            len(self.members) * MAX_SEALED_BYTES + SMALL_BYTES,
            input_limit(self.plan.params, self.dimension),
            reply_limit(self.dimension),
        ][self.phase_index]

    def _accept(self, member: Member, header: pb.UploadHeader, payload: bytes) -> None:
        try:
            [self._keys, self._context, self._input, self._result][self.phase_index](
                member, bytes(payload)
            )
        except BadSignatureError as error:
            self._refuse(member, str(error))
            raise UploadRefusedError("UNAUTHENTICATED", str(error)) from None
        except SecAggError as error:
            self._refuse(member, str(error))
            raise UploadRefusedError("INVALID_ARGUMENT", f"{error.reason.value}: {error}") from None

    def _refuse(self, member: Member, why: str) -> None:
        """A refused party leaves the phase (the round goes on without it, if it can)."""
        self.refused[member.name] = why
        self.expected.discard(member.name)

    def _keys(self, member: Member, payload: bytes) -> None:
        advert = read_advert(payload, self.round_id)
        if advert.index != member.index:
            raise CkksError(f"advert names index {advert.index}, the sender is {member.index}")
        advert.verify(self.round_id, member.identity_key, signer=member.name)
        if member.name == self.key_holder.name:
            if advert.context is None:
                raise CkksError("the key holder's advert must carry the public context")
            # Refuses a context holding a secret key, and one with other parameters.
            self.accumulator = self._new_accumulator(advert.context)
        elif advert.context is not None:
            raise CkksError("only the key holder sends a context")
        self.adverts[member.name] = advert

    def _new_accumulator(self, context: bytes) -> CkksAccumulator:
        """The running sum under the key holder's public context (a buffer's round binds its
        staleness context too: appliance/ckks_buffer.py)."""
        return CkksAccumulator(
            self.plan.params,
            context,
            self.round_id,
            self.dimension,
            model_version=self.plan.model_version,
        )

    def _context(self, member: Member, payload: bytes) -> None:
        if (why := read_refusal(payload, self.round_id)) is not None:
            self.key_holder_refusal = why  # e.g. a ghost data owner: the round aborts, audited
            return
        sealed = read_sealed(payload, self.round_id, len(self.members))
        wanted = {
            self.adverts[n].index
            for n in self.data_owners
            if n in self.adverts and n != self.key_holder.name
        }
        if self.plan.share_secret_key and set(sealed) != wanted:
            raise CkksError(f"sealed contexts for {sorted(sealed)}, expected {sorted(wanted)}")
        if not self.plan.share_secret_key and sealed:
            raise CkksError("this round does not share the secret context")
        self.sealed = sealed

    def _input(self, member: Member, payload: bytes) -> None:
        if member.name not in self.data_owners:
            raise CkksError("the separate key holder contributes no update")
        assert self.accumulator is not None  # set in phase keys, or the round aborted
        # Signature by this member, context, shape, every ciphertext: a bad upload is refused
        # here, so the key holder's own check fails only if the appliance cheats.
        self.accumulator.add(payload, Contributor(member.index, member.name, member.identity_key))
        self.uploads[member.name] = payload

    def _result(self, member: Member, payload: bytes) -> None:
        kind, value = read_key_holder_reply(payload, self.round_id, self.dimension)
        last = self._position == len(self.contributors) - 1
        if kind == "refused":
            self.key_holder_refusal = str(value)
            return
        if kind == "ack":
            if value != self._position or last:
                raise CkksError(f"acknowledgement for contribution {value}, expected the result")
            self._acked = True
            return
        if not last:
            raise CkksError("a result before every contribution was forwarded")
        assert isinstance(value, bytes)
        raw = value
        weighted = np.frombuffer(raw, dtype="<f8").copy()
        if not np.isfinite(weighted).all():
            raise CkksError("decrypted sum contains NaN or Inf")
        mean, total = mean_from_sum(weighted)
        slack = self.plan.params.error_bound(len(self.contributors))
        if total > len(self.contributors) + slack:
            raise CkksError(
                f"total weight {total:g} exceeds the {len(self.contributors)} contributors' maximum"
            )
        worst = float(np.abs(mean).max()) if mean.size else 0.0
        if worst > self.plan.clip + slack / total:  # honest inputs are clipped to ±clip
            raise CkksError(
                f"decrypted mean reaches {worst:.6g}, outside the clipping range "
                f"±{self.plan.clip:g}: a client encrypted values outside it"
            )
        self._check_total(total)
        self._weighted_sum = weighted

    def _check_total(self, total: float) -> None:
        """A further bound on the decrypted total weight (a buffer's: appliance/ckks_buffer.py)."""

    # -------------------------------------------------------------------------- phases

    def close_phase(self) -> dict[str, pb.Task]:
        return [self._close_keys, self._close_context, self._close_input, self._close_decrypt][
            self.phase_index
        ]()

    def _next(self, expected: set[str]) -> None:
        self.phase_index += 1
        self.expected = expected
        self.answered = set()

    def _close_keys(self) -> dict[str, pb.Task]:
        kh = self.key_holder.name
        if kh not in self.answered or self.accumulator is None:
            why = self.refused.get(kh, "it sent no key advert in time")
            raise CkksError(f"the key holder {kh} gave no usable public context: {why}")
        self.data_owners &= self.answered
        self._need_contributors(len(self.data_owners), "advertised keys")
        roster = {self.members[n].index: self.adverts[n] for n in self.data_owners if n != kh}
        self._next({kh})
        return {kh: self._step(roster_message(self.round_id, roster))}

    def _close_context(self) -> dict[str, pb.Task]:
        kh = self.key_holder.name
        self._check_refusal()
        if kh not in self.answered:
            raise CkksError(f"the key holder {kh} did not hand out the context in time")
        advert = self.adverts[kh]
        self._next(set(self.data_owners))
        return {
            name: self._step(
                bundle_message(
                    self.round_id,
                    self.key_holder.index,
                    advert,
                    self.sealed.get(self.members[name].index),
                )
            )
            for name in sorted(self.data_owners)
        }

    def _close_input(self) -> dict[str, pb.Task]:
        self.contributors = tuple(sorted(self.answered))
        self._need_contributors(len(self.contributors), "sent an encrypted update")
        kh = self.key_holder.name
        self._next({kh})
        return {kh: self._forward(0)}

    def _forward(self, position: int) -> pb.Task:
        """Step ``position``: one contributor's signed upload, verbatim, for the key holder."""
        self._position, self._acked = position, False
        name = self.contributors[position]
        message = contribution_message(
            self.round_id,
            position,
            len(self.contributors),
            self.members[name].index,
            self.uploads[name],
        )
        return self._step(message)

    def _close_decrypt(self) -> dict[str, pb.Task]:
        self._check_refusal()
        if self._acked:  # the same phase again, with the next contribution
            self.expected, self.answered = {self.key_holder.name}, set()
            return {self.key_holder.name: self._forward(self._position + 1)}
        if self._weighted_sum is None:
            why = self.refused.get(self.key_holder.name, "no answer in time")
            raise CkksError(f"the key holder did not return the decrypted sum: {why}")
        self._done = True
        self.uploads.clear()
        return {}

    def _check_refusal(self) -> None:
        if self.key_holder_refusal is not None:
            raise CkksError(f"the key holder refused: {self.key_holder_refusal}")

    def _need_contributors(self, count: int, what: str) -> None:
        if count < self.plan.minimum:
            raise CkksError(
                f"only {count} data owners {what}; the key holder decrypts no sum of fewer "
                f"than {self.plan.minimum}"
            )

    def _step(self, payload: bytes) -> pb.Task:
        return pb.Task(
            step=pb.ProtocolStep(round_id=self.round_id, phase=self.phase_index, payload=payload)
        )

    # -------------------------------------------------------------------------- result

    @property
    def finished(self) -> bool:
        return self._done

    def aggregate(self) -> Aggregate:
        assert self._weighted_sum is not None
        mean, total = mean_from_sum(self._weighted_sum)
        dropped = tuple(sorted(self._all_data_owners() - set(self.contributors)))
        return Aggregate(mean.astype(np.float32), total, self.contributors, dropped)

    def _all_data_owners(self) -> set[str]:
        return {n for n in self.members if self.plan.contributes or n != self.plan.key_holder.name}

    def total_digest_source(self) -> bytes:
        assert self._weighted_sum is not None
        return self._weighted_sum.tobytes()


def build_ckks_round(
    config: ApplianceConfig,
    number: int,
    round_id: bytes,
    members: list[Member],
    dimension: int,
    start: pb.RoundStart,
) -> tuple[CkksRound, dict]:
    """The round and its public parameters; ValueError (with the reason) refuses the round.

    The size guard runs here: a model whose ciphertexts would exceed ``[ckks].budget_bytes``
    per client (or the upload limit) is refused before any client does work.
    """
    section = config.ckks
    params = CkksParameters(
        section.poly_modulus_degree, tuple(section.coeff_mod_bit_sizes), section.scale_bits
    )
    if not section.key_holder:
        raise ValueError(
            "mode ckks needs a designated key holder: set [ckks].key_holder to the party with "
            "the key_holder role (it holds the secret key and sends no update)"
        )
    holder = next((m for m in members if m.name == section.key_holder), None)
    if holder is None:
        raise ValueError(f"the key holder {section.key_holder!r} is not among the ready clients")
    contributes = section.key_holder_contributes
    owners = len(members) - (0 if contributes else 1)
    try:  # the same check every data owner makes before it sends anything
        check_ckks_round(
            params,
            data_owners=owners,
            key_holder_listed=True,
            value_bound=config.aggregation.clip,
            max_error=section.max_error,
            minimum_contributors=section.min_contributors,
        )
        guess = estimate(params, dimension)
    except CkksError as error:
        raise ValueError(f"ckks parameters refused: {error}") from None
    if guess.bytes_per_client > section.budget_bytes:
        raise ValueError(
            f"ckks size guard: a model of {dimension:,} values needs {guess.describe()}, above "
            f"[ckks].budget_bytes = {section.budget_bytes:,}; CKKS is for small models, "
            "use mode secagg+ for this one"
        )
    limit = input_limit(params, dimension)
    if limit > config.aggregation.max_upload_bytes:
        raise ValueError(
            f"ckks uploads may reach {limit:,} B, above [aggregation].max_upload_bytes = "
            f"{config.aggregation.max_upload_bytes:,}; raise it or use mode secagg+"
        )
    plan = CkksPlan(
        params,
        holder,
        contributes,
        section.share_secret_key,
        section.max_error,
        config.aggregation.clip,
        start.model_version,
        section.min_contributors,
    )
    active = CkksRound(number, round_id, members, plan, dimension)
    active.describe(start)
    audit = {
        "round": number,
        "mode": "ckks",
        "poly_modulus_degree": params.poly_modulus_degree,
        "coeff_mod_bit_sizes": list(params.coeff_mod_bit_sizes),
        "scale_bits": params.scale_bits,
        "key_holder": holder.name,
        "key_holder_contributes": contributes,
        "share_secret_key": section.share_secret_key,
        "min_contributors": section.min_contributors,
        "key_holder_receives": "each contributor's signed ciphertexts, verbatim",
        "ciphertexts_per_client": guess.ciphertexts,
        "estimated_bytes_per_client": guess.bytes_per_client,
        "error_bound": params.error_bound(owners),
        "dimension": dimension,
    }
    return active, audit
