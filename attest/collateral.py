"""Vendor-signed collateral as one file bundle: what a verifier needs beside the evidence itself.

Intel's TCB info, QE identity and CRLs, AMD's VCEK/VLEK certificates and CRLs: an
operator fetches them on a connected machine (``sealagg attest collateral fetch``)
and ships the bundle with the appliance or the kit. Where the bytes came from adds
no trust: every item is signed by a vendor key that chains to the root pinned in
the policy, and each appraiser checks those signatures and the items' dates. An
appraiser that needs an item the bundle lacks refuses (``Reason.COLLATERAL_MISSING``)
instead of appraising half.

Layout (a directory, or the same as one msgpack map of path -> bytes on the wire)::

    tdx/...        see attest/tdx_collateral.py
    sev-snp/...    see attest/snp_collateral.py
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from types import MappingProxyType

import msgpack

from sealagg.attest.errors import AppraisalFailure, Reason

#: Upper bounds, so a hostile bundle (it may come from the appliance) cannot exhaust memory.
MAX_BUNDLE_BYTES = 16 * 1024 * 1024
MAX_FILES = 4096


@dataclasses.dataclass(frozen=True)
class CollateralBundle:
    """Read-only map of relative POSIX paths (``"tdx/tcb_info.json"``) to file bytes.

    ``shadowed``: other copies of an item, kept by :meth:`merged` when two sources (the kit
    and the appliance) both carry it with different bytes. Dated, vendor-signed items (CRLs,
    TCB info, QE identity) are then chosen by the appraiser among :meth:`candidates`: the
    newest copy that verifies. So a stale copy in the kit does not hide the fresh one the
    operator ships with the appliance, and a newer revocation list or TCB recovery reaches
    clients whose kits carry an older one; an older genuine copy cannot roll a newer one back.
    """

    files: Mapping[str, bytes] = dataclasses.field(default_factory=dict)
    shadowed: Mapping[str, tuple[bytes, ...]] = dataclasses.field(
        default_factory=dict, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        clean: dict[str, bytes] = {}
        for name, data in dict(self.files).items():
            clean[_check_name(name)] = bytes(data)
        others: dict[str, tuple[bytes, ...]] = {}
        for name, copies in dict(self.shadowed).items():
            name = _check_name(name)
            if name not in clean:
                raise ValueError(f"collateral item {name!r} is shadowed but not present")
            others[name] = tuple(c for c in dict.fromkeys(map(bytes, copies)) if c != clean[name])
        object.__setattr__(self, "files", MappingProxyType(clean))
        object.__setattr__(self, "shadowed", MappingProxyType(others))

    @classmethod
    def empty(cls) -> CollateralBundle:
        return cls({})

    @classmethod
    def from_directory(cls, root: Path | str) -> CollateralBundle:
        """Every regular file under ``root``; a missing directory is an empty bundle.

        Symbolic links are skipped: the appliance sends this bundle to every client, and the
        folder may sit on storage its host controls, so a planted link (say to a file only
        the TEE guest can read) must not turn the Attest reply into a file reader."""
        root = Path(root)
        if not root.is_dir():
            return cls.empty()
        files = {
            path.relative_to(root).as_posix(): path.read_bytes()
            for path in sorted(root.rglob("*"))
            if path.is_file() and not path.is_symlink()
        }
        return cls(files)

    def write_directory(self, root: Path | str) -> None:
        root = Path(root)
        for name, data in self.files.items():
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)

    def to_bytes(self) -> bytes:
        return msgpack.packb(dict(self.files), use_bin_type=True) if self.files else b""

    @classmethod
    def from_bytes(cls, blob: bytes) -> CollateralBundle:
        """Parse a bundle sent on the wire; anything malformed is a refusal, never a crash."""
        if not blob:
            return cls.empty()
        if len(blob) > MAX_BUNDLE_BYTES:
            raise AppraisalFailure(Reason.COLLATERAL_INVALID, "the collateral bundle is too large")
        try:
            data = msgpack.unpackb(blob, raw=False, strict_map_key=True)
        except Exception as exc:  # msgpack raises several unrelated types on garbage
            raise AppraisalFailure(
                Reason.COLLATERAL_INVALID, f"the collateral bundle is not msgpack: {exc}"
            ) from None
        if not isinstance(data, dict) or len(data) > MAX_FILES:
            raise AppraisalFailure(Reason.COLLATERAL_INVALID, "the collateral bundle is not a map")
        if not all(isinstance(k, str) and isinstance(v, bytes) for k, v in data.items()):
            raise AppraisalFailure(
                Reason.COLLATERAL_INVALID, "the collateral bundle maps names to bytes only"
            )
        try:
            return cls(data)
        except ValueError as exc:
            raise AppraisalFailure(Reason.COLLATERAL_INVALID, str(exc)) from None

    def merged(self, other: CollateralBundle | None) -> CollateralBundle:
        """``other``'s items added; where both have a name, ``self``'s (the local) copy comes
        first and ``other``'s is kept among the :meth:`candidates` (see the class docstring)."""
        if other is None or not other.files:
            return self
        files: dict[str, bytes] = {}
        shadowed: dict[str, tuple[bytes, ...]] = {}
        for name in {**other.files, **self.files}:
            copies = tuple(dict.fromkeys(self.candidates(name) + other.candidates(name)))
            files[name] = copies[0]
            if len(copies) > 1:
                shadowed[name] = copies[1:]
        return CollateralBundle(files, shadowed)

    def candidates(self, name: str) -> tuple[bytes, ...]:
        """Every copy of ``name``, the local one first (empty if the bundle has none)."""
        data = self.files.get(name)
        return () if data is None else (data, *self.shadowed.get(name, ()))

    def get(self, name: str) -> bytes | None:
        return self.files.get(name)

    def require(self, name: str, why: str) -> bytes:
        """The item, or a refusal that says which item is missing and what it is for."""
        data = self.files.get(name)
        if data is None:
            raise AppraisalFailure(
                Reason.COLLATERAL_MISSING,
                f"the collateral bundle has no {name!r} ({why}); fetch it with "
                "'sealagg attest collateral fetch' on a connected machine and ship it",
            )
        return data

    def names(self, prefix: str = "") -> list[str]:
        return sorted(n for n in self.files if n.startswith(prefix))


@dataclasses.dataclass(frozen=True)
class CollateralDownload:
    """One item an operator's connected machine fetches into the bundle (never run in tests).

    ``path``: where it goes in the bundle. ``response_header``: when set, the item is that
    HTTP response header's URL-decoded value (Intel sends issuer chains as headers), not the
    body. Each vendor module (tdx_collateral, snp_collateral) publishes ``fetch_plan(...)``
    returning these; ``sealagg attest collateral fetch`` carries them out.
    """

    url: str
    path: str
    response_header: str | None = None


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError("collateral item names are non-empty strings")
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or "\\" in name:
        raise ValueError(f"collateral item name {name!r} must be a relative path inside the bundle")
    return path.as_posix()
