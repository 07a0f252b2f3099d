"""What an asynchronous buffer's CKKS round fixes about staleness (issue 21, mode ``ckks``).

In an asynchronous ``ckks`` run each buffer is one CKKS round among the data owners that
registered for it, plus the run's key holder, on the current version as parent. The buffer's
public context is the masked modes' :class:`~crypto.buffer_context.BufferContext`: the
parent, every data owner's base version and the staleness function. The key holder trains
nothing and has no base version.

The rules, each with its reason:

- **Every contribution signs the whole context and its own base version**
  (:class:`~crypto.ckks.ContributionBinding` with ``buffer``, under its own domain tag). The
  key holder rebuilds the context from its own view of the round
  (:func:`buffer_context_for`) and decrypts nothing unless every contribution was signed
  over exactly that context and states the base version the context lists for its signer
  (:meth:`~crypto.ckks.CkksAccumulator.add`). A server that shows members different base
  versions (to inflate or deflate someone's weight) gets contributions signed over different
  contexts, and the key holder refuses the buffer; there is no transcript consistency round
  in CKKS, so the key holder is where the views meet.
- **A data owner refuses a buffer that lists another base version for it**
  (:meth:`BufferContext.check_own`) and folds ``w * s(tau)`` into its encrypted vector,
  ``tau = parent - base`` and ``s`` from :mod:`crypto.staleness` alone: the decrypted sum is
  ``[sum w s x, sum w s]`` and its quotient the staleness-weighted mean.
- **The total weight is bounded by the signed bases.** With ``w <= 1`` each member weighs at
  most ``s(tau)``, so a decrypted total above the sum of the contributors' ``s(tau)`` (plus
  the CKKS error) is refused, by the key holder before it releases the sum and by the
  appliance before it publishes (:func:`~crypto.ckks.check_buffer_total`).
- **The key holder is no data owner of a buffer.** It is listed without a base version; a
  context that lists one for it, or misses one for a data owner, is refused: the key holder
  could otherwise be counted towards the sum of ``m``, or a member's weight left undefined.

What no party can check, as in masked buffers: whether a member really folded ``s(tau)`` into
its ciphertext (only the bound on the total). Its influence stays bounded as in a synchronous
round (``w <= 1``, the clip).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from sealagg.crypto.buffer_context import BufferContext
from sealagg.crypto.errors import BaseVersionRefusedError
from sealagg.crypto.staleness import StalenessPolicy

__all__ = ["buffer_context_for"]


def buffer_context_for(
    parent_version: int,
    base_versions: Mapping[int, int],
    policy: StalenessPolicy,
    *,
    data_owners: Iterable[int],
    key_holder: int,
) -> BufferContext:
    """The buffer's context as one party of its CKKS round sees it, checked.

    ``base_versions``: what the round lists for each participant index (the key holder's
    entry, if any, must be 0: it trained nothing); ``data_owners``: every other index.
    Raises :class:`BaseVersionRefusedError` (a member past the maximum staleness, the key
    holder given a base version, a data owner missing one)."""
    owners = set(data_owners)
    if key_holder in owners:
        raise BaseVersionRefusedError("the key holder is no data owner of an asynchronous buffer")
    if base_versions.get(key_holder, 0) != 0:
        raise BaseVersionRefusedError(
            "the buffer lists a base version for its key holder, which trains nothing"
        )
    bases = {i: int(b) for i, b in base_versions.items() if i != key_holder}
    if set(bases) != owners:
        raise BaseVersionRefusedError(
            "the buffer does not list exactly one base version per data owner"
        )
    try:
        return BufferContext(int(parent_version), bases, policy)
    except BaseVersionRefusedError:
        raise
    except ValueError as error:  # malformed integers or staleness parameters
        raise BaseVersionRefusedError(f"the buffer's staleness context: {error}") from None
