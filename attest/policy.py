"""The appraisal policy: deny by default, read from a file carried in the client kit.

A policy only ever narrows what is accepted:

* every format section is REQUIRED evidence: the appliance must present one piece of
  evidence for each section, and nothing else. ``[nvidia-gpu]`` is an addition to
  ``[sev-snp]`` or ``[tdx]``, never a replacement (a GPU-only policy is refused: GPU
  evidence says nothing about the CPU and memory that hold the updates);
  ``[software]`` cannot be combined with hardware (it would lower the bar to "anyone
  holding the Ed25519 key");
* every value that bounds what passes is required or defaults to the strict value:
  a finite ``max_age_seconds`` of at most an hour, the SNP TCB floor with all its
  components, VMPL 0, all of MRTD and RTMR0-2 in every TDX entry, a TDX TEE TCB SVN
  floor, Intel TCB status "UpToDate" only (never "Revoked");
* debug-enabled guests are always refused (not configurable).

A missing or malformed file raises :class:`PolicyError`: the client sends nothing.
The software attester is accepted only if the CLIENT's own configuration says so
(``Verifier(..., allow_insecure=True)``); writing ``allow_insecure`` here is not enough.
See docs/attest-policy.md for every key.

Example (TOML; JSON with the same structure is accepted too)::

    version = 1
    max_age_seconds = 60              # required, 0 < x <= 3600

    [sev-snp]
    trusted_ark_sha256 = ["<hex SHA-256 of the ARK certificate DER>"]
    min_tcb = { bootloader = 3, tee = 0, snp = 8, microcode = 115 }   # required; fmc on Turin
    min_guest_svn = 0                 # optional, default 0
    required_claims = { vmpl = 0 }    # optional: vmpl defaults to 0
    [[sev-snp.measurements]]
    measurement = "<96 hex digits>"

    [nvidia-gpu]                      # optional addition: GPU evidence is then required too
    sdk_policy = '<NVIDIA appraisal policy JSON>'

A TDX policy instead (one CPU TEE per policy: a VM is either SNP or TDX)::

    version = 1
    max_age_seconds = 60
    [tdx]
    trusted_root_sha256 = ["<hex SHA-256 of the Intel SGX Root CA DER>"]
    min_tee_tcb_svn = "<32 hex digits>"                 # required
    accepted_tcb_status = ["UpToDate"]                  # optional, this is the default
    [[tdx.measurements]]                                # mrtd and rtmr0-2 required
    mrtd = "..."
    rtmr0 = "..."
    rtmr1 = "..."
    rtmr2 = "..."

Development only (every result is marked insecure; the client must opt in)::

    version = 1
    max_age_seconds = 60
    [software]
    trusted_keys = ["<64 hex digits: Ed25519 verify key>"]
    [[software.measurements]]
    measurement = "..."
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from sealagg.attest.errors import PolicyError
from sealagg.attest.evidence import FORMATS, NVIDIA_GPU, SEV_SNP, SOFTWARE, TDX

POLICY_VERSION = 1
#: Evidence older than this is never accepted: the nonce must be answered within the hour.
MAX_AGE_LIMIT_SECONDS = 3600.0
#: Formats that attest the CPU and memory holding the updates; exactly one per policy.
CPU_TEE_FORMATS = (SEV_SNP, TDX)
#: Formats that may only be required in addition to a CPU TEE.
ADDITION_FORMATS = (NVIDIA_GPU,)

_SNP_TCB = ("bootloader", "tee", "snp", "microcode")
_SNP_TCB_OPTIONAL = ("fmc",)  # Turin's TCB_VERSION adds the FMC SPL
_VMPL_MAX = 3
#: Intel TCB status values a policy may accept (Intel PCS TCB Info v3). "Revoked" never.
TDX_TCB_STATUSES = (
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
)
DEFAULT_TDX_TCB_STATUS = ("UpToDate",)

#: Claims a measurement entry may name, with their size in bytes; ``True`` = every entry names it.
_MEASUREMENT_CLAIMS: dict[str, dict[str, tuple[int, bool]]] = {
    SEV_SNP: {
        "measurement": (48, True),
        "host_data": (32, False),
        "id_key_digest": (48, False),
        "author_key_digest": (48, False),
        "family_id": (16, False),
        "image_id": (16, False),
    },
    TDX: {
        "mrtd": (48, True),
        "rtmr0": (48, True),
        "rtmr1": (48, True),
        "rtmr2": (48, True),
        "rtmr3": (48, False),
        "mrconfigid": (48, False),
        "mrowner": (48, False),
        "mrownerconfig": (48, False),
    },
    SOFTWARE: {"measurement": (48, True)},
}

_COMMON_KEYS = {"measurements", "required_claims"}
_SECTION_KEYS = {
    SEV_SNP: _COMMON_KEYS | {"trusted_ark_sha256", "min_guest_svn", "min_tcb", "product"},
    TDX: _COMMON_KEYS
    | {
        "trusted_root_sha256",
        "min_tee_tcb_svn",
        "accepted_tcb_status",
        "expected_mrsignerseam",
        "min_tcb_evaluation_data_number",
    },
    SOFTWARE: _COMMON_KEYS | {"trusted_keys", "allow_insecure", "min_svn"},
    NVIDIA_GPU: {"required_claims", "verifier_url", "sdk_policy"},
}
_ANCHOR_KEY = {SEV_SNP: "trusted_ark_sha256", TDX: "trusted_root_sha256", SOFTWARE: "trusted_keys"}


@dataclasses.dataclass(frozen=True)
class FormatPolicy:
    """What one evidence format must show. ``measurements``: each entry maps claims to hex.

    Build it with :func:`parse_policy`; the parser fills the strict defaults
    (``required_claims["vmpl"] = 0`` for SNP, ``options["accepted_tcb_status"]`` for TDX).
    """

    format: str
    measurements: tuple[Mapping[str, str], ...]
    trust_anchors: tuple[bytes, ...]
    required_claims: Mapping[str, object]
    options: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Policy:
    """Every format in ``formats`` is required evidence; see the module docstring."""

    max_age_seconds: float
    formats: Mapping[str, FormatPolicy]

    def __post_init__(self) -> None:
        # Checked here too, so a Policy built in code cannot skip the two widening rules.
        _check_max_age(self.max_age_seconds, "policy")
        _check_combination(tuple(self.formats), "policy")

    def section(self, fmt: str) -> FormatPolicy | None:
        return self.formats.get(fmt)

    @property
    def required(self) -> tuple[str, ...]:
        """The required formats, the CPU TEE (or software) first, then the additions."""
        return tuple(sorted(self.formats, key=lambda f: f in ADDITION_FORMATS))

    @property
    def primary(self) -> str:
        """The format whose claims are the result's top-level claims."""
        return self.required[0]


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
    """Parse a policy; any defect is a :class:`PolicyError`, never another exception."""
    if not isinstance(text, str):
        raise PolicyError(f"{source}: the policy must be text")
    try:
        data = (
            json.loads(text, object_pairs_hook=_unique_members)
            if json_format
            else tomllib.loads(text)
        )
    except (ValueError, RecursionError) as exc:  # JSON/TOML errors, huge integers, deep nesting
        raise PolicyError(
            f"{source}: not valid {'JSON' if json_format else 'TOML'}: {_short(exc)}"
        ) from None
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: the policy must be a table/object")
    return policy_from_dict(data, source=source)


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON objects with a name twice are refused (TOML refuses them itself): with
    ``json.loads`` the last copy silently wins, so a reviewer reading the first ``[tdx]``
    or ``max_age_seconds`` would approve a policy the verifier never enforces."""
    out: dict[str, Any] = {}
    for name, value in pairs:
        if name in out:
            raise ValueError(f"the member {name[:40]!r} appears twice")
        out[name] = value
    return out


def policy_from_dict(data: Mapping[str, Any], *, source: str = "policy") -> Policy:
    if not isinstance(data, Mapping):
        raise PolicyError(f"{source}: the policy must be a table/object")
    data = dict(data)
    version = data.pop("version", None)
    if type(version) is not int or version != POLICY_VERSION:
        raise PolicyError(f"{source}: version must be {POLICY_VERSION}")
    max_age = data.pop("max_age_seconds", None)
    _check_max_age(max_age, source)
    formats: dict[str, FormatPolicy] = {}
    for name, section in data.items():
        if name not in FORMATS:
            raise PolicyError(f"{source}: unknown key or evidence format {name!r}")
        if not isinstance(section, dict):
            raise PolicyError(f"{source}: [{name}] must be a table")
        formats[name] = _section(name, section, f"{source}: [{name}]")
    _check_combination(tuple(formats), source)
    return Policy(float(max_age), MappingProxyType(formats))  # type: ignore[arg-type]


def _check_max_age(max_age: object, source: str) -> None:
    """Required and finite: an unbounded age lets a relay replay evidence from months ago."""
    if (
        isinstance(max_age, bool)
        or not isinstance(max_age, int | float)
        or not math.isfinite(max_age)
        or not 0 < max_age <= MAX_AGE_LIMIT_SECONDS
    ):
        raise PolicyError(
            f"{source}: max_age_seconds is required: a number of seconds, "
            f"0 < max_age_seconds <= {MAX_AGE_LIMIT_SECONDS:g}"
        )


def _check_combination(names: tuple[str, ...], source: str) -> None:
    """Each section is required evidence, so only combinations that narrow are allowed."""
    present = set(names)
    if not present:
        raise PolicyError(f"{source}: no evidence format is required; nothing could pass")
    unknown = present - set(FORMATS)
    if unknown:
        raise PolicyError(f"{source}: unknown evidence formats {sorted(unknown)}")
    cpu = present & set(CPU_TEE_FORMATS)
    if SOFTWARE in present and len(present) > 1:
        raise PolicyError(
            f"{source}: [software] cannot be combined with hardware evidence: the software "
            "attester proves nothing, so it would only lower the bar. Write a separate policy"
        )
    if len(cpu) > 1:
        raise PolicyError(
            f"{source}: [sev-snp] and [tdx] both required: a confidential VM is one or the "
            "other, so nothing could pass. Write one policy for the platform the appliance runs on"
        )
    if present & set(ADDITION_FORMATS) and not cpu:
        raise PolicyError(
            f"{source}: [nvidia-gpu] is only an addition to [sev-snp] or [tdx]: GPU evidence "
            "says nothing about the CPU and memory that hold the updates"
        )


def _section(fmt: str, section: dict[str, Any], where: str) -> FormatPolicy:
    unknown = set(section) - _SECTION_KEYS[fmt]
    if unknown:
        raise PolicyError(f"{where}: unknown keys {sorted(unknown)}")
    if fmt == NVIDIA_GPU:  # NVIDIA's SDK checks measurements against its reference manifests
        _check_sdk_policy(section.get("sdk_policy"), where)
        measurements: tuple[Mapping[str, str], ...] = ()
    else:
        measurements = _measurements(fmt, section.get("measurements"), where)
    anchors: tuple[bytes, ...] = ()
    if fmt in _ANCHOR_KEY:
        key = _ANCHOR_KEY[fmt]
        raw = section.get(key)
        if not isinstance(raw, list) or not raw:
            raise PolicyError(f"{where}: {key} must name at least one trust anchor")
        anchors = tuple(bytes.fromhex(_hex(v, f"{where}.{key}", length=32)) for v in raw)
    required = _required_claims(fmt, section.get("required_claims", {}), where)
    options = {
        k: v for k, v in section.items() if k not in _COMMON_KEYS and k != _ANCHOR_KEY.get(fmt)
    }
    options = _options(fmt, options, where)
    return FormatPolicy(
        fmt, measurements, anchors, MappingProxyType(required), MappingProxyType(options)
    )


def _check_sdk_policy(sdk_policy: object, where: str) -> None:
    try:
        ok = isinstance(sdk_policy, str) and isinstance(json.loads(sdk_policy), dict)
    except (ValueError, RecursionError):
        ok = False
    if not ok:
        raise PolicyError(f"{where}: sdk_policy must be NVIDIA's appraisal policy (a JSON object)")


def _measurements(fmt: str, entries: object, where: str) -> tuple[Mapping[str, str], ...]:
    """Each entry must pin every claim that decides what code runs (e.g. TDX RTMR0-2)."""
    if not isinstance(entries, list) or not entries:
        raise PolicyError(f"{where}: measurements must list at least one allowed entry")
    claims = _MEASUREMENT_CLAIMS[fmt]
    must = [name for name, (_, required) in claims.items() if required]
    out = []
    for entry in entries:
        if not isinstance(entry, dict) or not entry:
            raise PolicyError(f"{where}: each measurement entry is a non-empty table")
        unknown = set(entry) - set(claims)
        if unknown:
            raise PolicyError(
                f"{where}: measurement entries take only {sorted(claims)}; not {sorted(unknown)}"
            )
        missing = [name for name in must if name not in entry]
        if missing:
            raise PolicyError(
                f"{where}: every measurement entry must name {must}; one lacks {missing} "
                "(an unnamed register would accept any value, e.g. any kernel)"
            )
        out.append(
            MappingProxyType(
                {
                    claim: _hex(value, f"{where}.measurements.{claim}", length=claims[claim][0])
                    for claim, value in entry.items()
                }
            )
        )
    return tuple(out)


def _required_claims(fmt: str, required: object, where: str) -> dict[str, object]:
    if not isinstance(required, dict):
        raise PolicyError(f"{where}: required_claims must be a table")
    for name, value in required.items():
        if not isinstance(value, str | int | float) or (
            isinstance(value, float) and not math.isfinite(value)
        ):
            raise PolicyError(f"{where}: required_claims.{name} must be a string or number")
    out = dict(required)
    if fmt == SEV_SNP:
        # VMPL 0 is the guest's most privileged level; a report from a higher VMPL may come from
        # code the guest owner did not measure (e.g. a malicious paravisor's lower layer).
        vmpl = out.setdefault("vmpl", 0)
        if type(vmpl) is not int or not 0 <= vmpl <= _VMPL_MAX:
            raise PolicyError(f"{where}: required_claims.vmpl is an integer 0..{_VMPL_MAX}")
    return out


_SNP_PRODUCTS = ("Milan", "Genoa", "Turin")


def _snp_products(raw: object, where: str) -> tuple[str, ...]:
    names = [raw] if isinstance(raw, str) else raw
    if not isinstance(names, list) or not names:
        raise PolicyError(f"{where}: product is one of {list(_SNP_PRODUCTS)} or a list of them")
    out = []
    for name in names:
        match = [p for p in _SNP_PRODUCTS if isinstance(name, str) and name.lower() == p.lower()]
        if not match:
            raise PolicyError(f"{where}: product {name!r} is not one of {list(_SNP_PRODUCTS)}")
        out.append(match[0])
    return tuple(out)


def _options(fmt: str, options: dict[str, Any], where: str) -> dict[str, Any]:
    """Validate each option and fill in the strict defaults; returns the options to store."""
    for key in ("min_guest_svn", "min_svn"):
        if key in options and (type(options[key]) is not int or not 0 <= options[key] < 2**32):
            raise PolicyError(f"{where}: {key} must be an integer 0..2^32-1")
    if fmt == SEV_SNP:
        options.setdefault("min_guest_svn", 0)
        options["min_tcb"] = _snp_min_tcb(options.get("min_tcb"), where)
        if "product" in options:  # narrows the AMD products accepted (it fixes the TCB layout)
            options["product"] = _snp_products(options["product"], where)
    if fmt == TDX:
        if "min_tee_tcb_svn" not in options:
            raise PolicyError(
                f"{where}: min_tee_tcb_svn is required (32 hex digits: the lowest TEE_TCB_SVN "
                "accepted, component by component)"
            )
        options["min_tee_tcb_svn"] = _hex(
            options["min_tee_tcb_svn"], f"{where}.min_tee_tcb_svn", length=16
        )
        options["accepted_tcb_status"] = _tcb_status(options.get("accepted_tcb_status"), where)
        # Intel raises tcbEvaluationDataNumber at each TCB recovery; older genuine TCB info
        # stays valid for weeks and may still rate an unpatched platform UpToDate.
        floor = options.setdefault("min_tcb_evaluation_data_number", 0)
        if type(floor) is not int or not 0 <= floor < 2**32:
            raise PolicyError(f"{where}: min_tcb_evaluation_data_number is an integer 0..2^32-1")
        if "expected_mrsignerseam" in options:
            raw = options["expected_mrsignerseam"]
            if not isinstance(raw, list) or not raw:
                raise PolicyError(f"{where}: expected_mrsignerseam lists 96-hex values")
            options["expected_mrsignerseam"] = tuple(
                _hex(v, f"{where}.expected_mrsignerseam", length=48) for v in raw
            )
    if fmt == SOFTWARE and "allow_insecure" in options and options["allow_insecure"] is not True:
        raise PolicyError(
            f"{where}: allow_insecure = {options['allow_insecure']!r} contradicts the section; "
            "leave it out (the client's own configuration decides whether software evidence "
            "is accepted)"
        )
    if fmt == NVIDIA_GPU and not isinstance(options.get("verifier_url", ""), str):
        raise PolicyError(f"{where}: verifier_url must be a string")
    return options


def _snp_min_tcb(tcb: object, where: str) -> Mapping[str, int]:
    """Required with every component: a missing floor accepts firmware with known flaws."""
    if not isinstance(tcb, dict):
        raise PolicyError(
            f"{where}: min_tcb is required: {{ bootloader, tee, snp, microcode }} "
            "(and fmc on Turin), the lowest reported TCB accepted"
        )
    missing = [k for k in _SNP_TCB if k not in tcb]
    unknown = set(tcb) - set(_SNP_TCB) - set(_SNP_TCB_OPTIONAL)
    if missing or unknown:
        raise PolicyError(
            f"{where}: min_tcb must name each of {list(_SNP_TCB)} (fmc optional); "
            f"missing {missing}, unknown {sorted(unknown)}"
        )
    if not all(type(v) is int and 0 <= v < 256 for v in tcb.values()):
        raise PolicyError(f"{where}: min_tcb values are integers 0..255")
    return MappingProxyType(dict(tcb))


def _tcb_status(raw: object, where: str) -> tuple[str, ...]:
    if raw is None:
        return DEFAULT_TDX_TCB_STATUS
    if not isinstance(raw, list) or not raw or not all(isinstance(s, str) for s in raw):
        raise PolicyError(f"{where}: accepted_tcb_status lists Intel TCB status names")
    if "Revoked" in raw:
        raise PolicyError(f"{where}: accepted_tcb_status may never include 'Revoked'")
    unknown = [s for s in raw if s not in TDX_TCB_STATUSES]
    if unknown:
        raise PolicyError(
            f"{where}: accepted_tcb_status: unknown {unknown}; allowed {list(TDX_TCB_STATUSES)}"
        )
    return tuple(dict.fromkeys(raw))


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


def _short(exc: BaseException) -> str:
    return str(exc)[:200]
