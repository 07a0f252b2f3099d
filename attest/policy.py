"""The appraisal policy: deny by default, read from a file carried in the client kit.

A format is allowed only if the policy has a section for it, and that section
must name at least one allowed measurement and (for hardware formats) at least
one trust anchor. Debug-enabled guests are always refused. A missing or
malformed file raises :class:`PolicyError`: the client sends nothing.

Example (TOML; JSON with the same structure is accepted too)::

    version = 1
    max_age_seconds = 60

    [sev-snp]
    trusted_ark_sha256 = ["<hex SHA-256 of the ARK certificate DER>"]
    min_guest_svn = 0
    min_tcb = { bootloader = 3, tee = 0, snp = 8, microcode = 115 }
    required_claims = { vmpl = 0 }
    [[sev-snp.measurements]]
    measurement = "<96 hex digits>"

    [tdx]
    trusted_root_sha256 = ["<hex SHA-256 of the Intel SGX Root CA DER>"]
    min_tee_tcb_svn = "<32 hex digits>"
    [[tdx.measurements]]
    mrtd = "..."
    rtmr0 = "..."
    rtmr1 = "..."
    rtmr2 = "..."

    [software]            # development only; every result is marked insecure
    allow_insecure = true
    trusted_keys = ["<64 hex digits: Ed25519 verify key>"]
    [[software.measurements]]
    measurement = "..."
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from sealagg.attest.errors import PolicyError
from sealagg.attest.evidence import FORMATS, NVIDIA_GPU, SEV_SNP, SOFTWARE, TDX

POLICY_VERSION = 1

_COMMON_KEYS = {"measurements", "required_claims"}
_SECTION_KEYS = {
    SEV_SNP: _COMMON_KEYS | {"trusted_ark_sha256", "min_guest_svn", "min_tcb"},
    TDX: _COMMON_KEYS | {"trusted_root_sha256", "min_tee_tcb_svn"},
    SOFTWARE: _COMMON_KEYS | {"trusted_keys", "allow_insecure", "min_svn"},
    NVIDIA_GPU: {"required_claims", "verifier_url", "sdk_policy"},
}
_ANCHOR_KEY = {SEV_SNP: "trusted_ark_sha256", TDX: "trusted_root_sha256", SOFTWARE: "trusted_keys"}
_SNP_TCB = ("bootloader", "tee", "snp", "microcode")


@dataclasses.dataclass(frozen=True)
class FormatPolicy:
    """What one evidence format must show. ``measurements``: each entry maps claims to hex."""

    format: str
    measurements: tuple[Mapping[str, str], ...]
    trust_anchors: tuple[bytes, ...]
    required_claims: Mapping[str, object]
    options: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Policy:
    max_age_seconds: float
    formats: Mapping[str, FormatPolicy]

    def section(self, fmt: str) -> FormatPolicy | None:
        return self.formats.get(fmt)


def load_policy(path: Path | str) -> Policy:
    """Read a TOML or JSON policy file; :class:`PolicyError` if missing or malformed."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError(f"{path}: no attestation policy; nothing will be sent") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"{path}: cannot read the attestation policy: {exc}") from None
    return parse_policy(text, source=str(path), json_format=path.suffix == ".json")


def parse_policy(text: str, *, source: str = "policy", json_format: bool = False) -> Policy:
    try:
        data = json.loads(text) if json_format else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PolicyError(
            f"{source}: not valid {'JSON' if json_format else 'TOML'}: {exc}"
        ) from None
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: the policy must be a table/object")
    return policy_from_dict(data, source=source)


def policy_from_dict(data: Mapping[str, Any], *, source: str = "policy") -> Policy:
    data = dict(data)
    if data.pop("version", None) != POLICY_VERSION:
        raise PolicyError(f"{source}: version must be {POLICY_VERSION}")
    max_age = data.pop("max_age_seconds", None)
    if isinstance(max_age, bool) or not isinstance(max_age, int | float) or not max_age > 0:
        raise PolicyError(f"{source}: max_age_seconds must be a positive number")
    formats: dict[str, FormatPolicy] = {}
    for name, section in data.items():
        if name not in FORMATS:
            raise PolicyError(f"{source}: unknown key or evidence format {name!r}")
        if not isinstance(section, dict):
            raise PolicyError(f"{source}: [{name}] must be a table")
        formats[name] = _section(name, section, f"{source}: [{name}]")
    if not formats:
        raise PolicyError(f"{source}: no evidence format is allowed; nothing could pass")
    return Policy(float(max_age), MappingProxyType(formats))


def _section(fmt: str, section: dict[str, Any], where: str) -> FormatPolicy:
    unknown = set(section) - _SECTION_KEYS[fmt]
    if unknown:
        raise PolicyError(f"{where}: unknown keys {sorted(unknown)}")
    entries = section.get("measurements")
    if fmt == NVIDIA_GPU:  # NVIDIA's SDK checks measurements against its reference manifests
        sdk_policy = section.get("sdk_policy")
        try:
            json.loads(sdk_policy if isinstance(sdk_policy, str) else "")
        except json.JSONDecodeError:
            raise PolicyError(
                f"{where}: sdk_policy must be NVIDIA's appraisal policy (JSON)"
            ) from None
        entries = []
    elif not isinstance(entries, list) or not entries:
        raise PolicyError(f"{where}: measurements must list at least one allowed entry")
    measurements = []
    for entry in entries:
        if not isinstance(entry, dict) or not entry:
            raise PolicyError(f"{where}: each measurement entry is a non-empty table")
        clean = {}
        for claim, value in entry.items():
            clean[claim] = _hex(value, f"{where}.measurements.{claim}")
        measurements.append(MappingProxyType(clean))
    anchors: tuple[bytes, ...] = ()
    if fmt in _ANCHOR_KEY:
        key = _ANCHOR_KEY[fmt]
        raw = section.get(key)
        if not isinstance(raw, list) or not raw:
            raise PolicyError(f"{where}: {key} must name at least one trust anchor")
        want = 32
        anchors = tuple(bytes.fromhex(_hex(v, f"{where}.{key}", length=want)) for v in raw)
    required = section.get("required_claims", {})
    if not isinstance(required, dict):
        raise PolicyError(f"{where}: required_claims must be a table")
    options = {
        k: v for k, v in section.items() if k not in _COMMON_KEYS and k != _ANCHOR_KEY.get(fmt)
    }
    _check_options(fmt, options, where)
    return FormatPolicy(
        fmt,
        tuple(measurements),
        anchors,
        MappingProxyType(dict(required)),
        MappingProxyType(options),
    )


def _check_options(fmt: str, options: dict[str, Any], where: str) -> None:
    for key in ("min_guest_svn", "min_svn"):
        if key in options and (not isinstance(options[key], int) or options[key] < 0):
            raise PolicyError(f"{where}: {key} must be a non-negative integer")
    if fmt == SEV_SNP and "min_tcb" in options:
        tcb = options["min_tcb"]
        if not isinstance(tcb, dict) or set(tcb) - set(_SNP_TCB):
            raise PolicyError(f"{where}: min_tcb takes only {list(_SNP_TCB)}")
        if not all(isinstance(v, int) and 0 <= v < 256 for v in tcb.values()):
            raise PolicyError(f"{where}: min_tcb values are integers 0..255")
    if fmt == TDX and "min_tee_tcb_svn" in options:
        _hex(options["min_tee_tcb_svn"], f"{where}.min_tee_tcb_svn", length=16)
    if fmt == SOFTWARE and options.get("allow_insecure") is not True:
        raise PolicyError(
            f"{where}: the software attester proves nothing; set allow_insecure = true to accept it"
        )


def _hex(value: object, where: str, *, length: int | None = None) -> str:
    if not isinstance(value, str):
        raise PolicyError(f"{where}: expected a hex string")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise PolicyError(f"{where}: not hex") from None
    if not raw or (length is not None and len(raw) != length):
        raise PolicyError(f"{where}: expected {length or 'some'} bytes of hex")
    return raw.hex()
