"""What the numbers were measured on: cores, memory, CPU flags, load, library versions."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

LIBRARIES = (
    "sealagg",
    "numpy",
    "numba",
    "cryptography",
    "PyNaCl",
    "grpcio",
    "protobuf",
    "msgpack",
    "tenseal",
    "pytest",
    "pytest-benchmark",
    "matplotlib",
)


#: CPU flags that decide this project's speeds: AES-NI and its vector form (mask keystreams,
#: TLS), carry-less multiply (GCM), AVX2 / AVX-512 (numpy and Numba kernels), SHA extensions.
CPU_FLAGS = (
    "aes",
    "vaes",
    "pclmulqdq",
    "vpclmulqdq",
    "avx2",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "sha_ni",
    "hypervisor",
)
VENDORS = {"GenuineIntel": "Intel", "AuthenticAMD": "AMD"}


def parse_cpuinfo(text: str) -> dict[str, Any]:
    """The CPU as ``/proc/cpuinfo`` says (first processor block; a VM may be moved to another
    host between runs, which is why this is read at every run and never written by hand)."""
    fields: dict[str, str] = {}
    processors = 0
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip()
        if not sep:
            continue
        if key == "processor":
            processors += 1
        fields.setdefault(key, value.strip())
    flags = set(fields.get("flags", "").split())
    vendor = fields.get("vendor_id", "")
    return {
        "cpu": fields.get("model name") or "unknown",
        "cpu_vendor": VENDORS.get(vendor, vendor or None),
        "cpu_family_model": (
            f"family {fields['cpu family']} model {fields['model']}"
            if "cpu family" in fields and "model" in fields
            else None
        ),
        "cpu_flags": [f for f in CPU_FLAGS if f in flags],
        "processors": processors or None,
    }


def _cpu() -> dict[str, Any]:
    try:
        return parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        return {"cpu": platform.processor() or "unknown", "cpu_flags": []}


def blas() -> str | None:
    """numpy's BLAS (name and version, and OpenBLAS's core), from numpy's build config."""
    try:
        import numpy

        config = numpy.show_config(mode="dicts")  # type: ignore[call-arg]
        found = (config or {}).get("Build Dependencies", {}).get("blas", {})
    except Exception:  # an old numpy or an odd build: the report says unknown
        return None
    if not found.get("name"):
        return None
    text = f"{found['name']} {found.get('version', '')}".strip()
    core = found.get("openblas configuration", "")
    return f"{text} ({core})" if core else text


def _mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _git_commit(root: Path) -> str | None:
    """The checkout's HEAD (read only), so a report names the code it measured."""
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def describe(root: Path) -> dict[str, Any]:
    versions: dict[str, str] = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        **_cpu(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": _mem_total_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "blas": blas(),
        "libraries": versions,
        "git_commit": _git_commit(root),
        "load_average_start": load_average(),
    }
