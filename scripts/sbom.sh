#!/usr/bin/env bash
# Write the CycloneDX SBOM (JSON, spec 1.6) of the appliance image: every Python package the
# image installs, from requirements/lock-appliance.txt (name, version, purl, the lock's
# sha256 hashes), the image's base by digest (from the Dockerfile's FROM), and sealagg itself
# as the root component. Offline and fast: it reads the lock, not an index or an image.
#   scripts/sbom.sh [OUT]        OUT defaults to - (stdout)
# Needs cyclonedx-bom (the lock's dev extra; PYTHON=/path/to/python to use another venv).
# setuptools builds the project in the image's build stage and is then removed,
# so it is not in the SBOM (tests/e2e/test_deploy_files.py checks the whole set).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:--}
BUILD_ONLY="setuptools"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# 1. The image's runtime set: the lock without its build-only blocks (a block is a pin line
#    and its indented --hash / comment lines).
awk -v drop="$BUILD_ONLY" '
    BEGIN { n = split(drop, names, " "); for (i = 1; i <= n; i++) skip[names[i]] = 1 }
    /^[A-Za-z0-9]/ { split($1, pin, "=="); dropping = (tolower(pin[1]) in skip) }
    !dropping { print }
' requirements/lock-appliance.txt > "$work/runtime.txt"

# 2. The SBOM of that set (reproducible: no random serial number, no timestamp unless
#    SOURCE_DATE_EPOCH is set).
PYTHONWARNINGS=ignore::UserWarning "$PY" -m cyclonedx_py requirements \
    --pyproject pyproject.toml --sv 1.6 --output-reproducible --no-validate \
    -o "$work/python.cdx.json" "$work/runtime.txt"

# 3. Add the base image (by digest), then validate against the CycloneDX 1.6 schema.
"$PY" - "$work/python.cdx.json" "$OUT" <<'PYTHON'
import json
import re
import sys
from pathlib import Path

from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packageurl import PackageURL

source, out = sys.argv[1], sys.argv[2]
bom = json.loads(Path(source).read_text(encoding="utf-8"))
dockerfile = Path("Dockerfile").read_text(encoding="utf-8")
match = re.search(r"^ARG PYTHON_IMAGE=([^:@\s]+):([^@\s]+)@(sha256:[0-9a-f]{64})$", dockerfile, re.M)
if match is None:
    sys.exit("sbom.sh: the Dockerfile's ARG PYTHON_IMAGE names no image:tag@sha256:<digest>")
name, tag, digest = match.groups()
namespace = "library" if "/" not in name else name.rsplit("/", 1)[0]
bom["components"].append(
    {
        "type": "container",
        "bom-ref": "base-image",
        "name": name.rsplit("/", 1)[-1],
        "version": digest,
        "description": f"the image's base, {name}:{tag}, pinned by digest in the Dockerfile",
        "purl": PackageURL(
            type="docker",
            namespace=namespace,
            name=name.rsplit("/", 1)[-1],
            version=digest,
            qualifiers={"repository_url": "docker.io", "tag": tag},
        ).to_string(),
    }
)
text = json.dumps(bom, indent=2, sort_keys=True) + "\n"
error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
if error is not None:
    sys.exit(f"sbom.sh: the SBOM is not valid CycloneDX 1.6: {error}")
if out == "-":
    sys.stdout.write(text)
else:
    Path(out).write_text(text, encoding="utf-8")
PYTHON
