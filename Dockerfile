# syntax=docker/dockerfile:1
# sealagg appliance: the aggregation server and its admin CLI. No torch, no client extra.
# Operator's guide: docs/deploy.md (compose, systemd, the image's weight and SBOM).
#
#   docker build -t sealagg:0.1.0 \
#       --build-arg SOURCE=<repository URL> --build-arg REVISION=$(git rev-parse HEAD) .
#   docker compose -f deploy/compose.yaml up -d
#
# /federation holds the CA key, the server key and the audit signing key: keep the volume
# private, and back it up (it is also the state database and the model store). Nothing secret
# is ever built into a layer: .dockerignore lets in only the sources named there.

# The base, pinned by digest (python:3.11-slim, 3.11.16; see docs/deploy.md for how to refresh
# it). Both stages use the same image, so the venv's interpreter link stays valid.
ARG PYTHON_IMAGE=python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7

# ---- build: the locked dependencies and the project into /opt/sealagg ------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# The venv has no pip of its own: the base image's pip installs into it (--python), so the
# image ships no unlocked installer inside the venv.
# Dependencies first (their layer survives source edits), only from the image's lock, every
# file checked against its hash: an index or mirror cannot substitute a package.
COPY requirements/lock-appliance.txt requirements/lock-appliance.txt
RUN python -m venv --without-pip /opt/sealagg \
 && python -m pip --python /opt/sealagg/bin/python install \
        --no-deps --require-hashes --only-binary=:all: -r requirements/lock-appliance.txt
COPY pyproject.toml README.md ./
COPY kernels kernels
COPY crypto crypto
COPY attest attest
COPY appliance appliance
COPY client_shim client_shim
# --no-build-isolation: the project builds with the locked setuptools, not a fresh download.
# Then the build backend leaves (it is not needed at run time), pip check proves the set is
# complete, and the image refuses to build if anything pulled in torch.
RUN python -m pip --python /opt/sealagg/bin/python install --no-deps --no-build-isolation . \
 && python -m pip --python /opt/sealagg/bin/python uninstall --yes setuptools \
 && python -m pip --python /opt/sealagg/bin/python check \
 && /opt/sealagg/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)"

# ---- runtime: the venv and a non-root user; no compiler, no build tools --------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=unknown
ARG PYTHON_IMAGE
LABEL org.opencontainers.image.title="sealagg appliance" \
      org.opencontainers.image.description="Secure-aggregation appliance for federated learning (no torch)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
ENV PATH=/opt/sealagg/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONSAFEPATH=1 \
    SEALAGG_FOLDER=/federation \
    NUMBA_CACHE_DIR=/tmp/numba-cache \
    SEALAGG_HEALTHCHECK_ADDRESS=127.0.0.1:50051
RUN groupadd --system --gid 10001 sealagg \
 && useradd --system --uid 10001 --gid sealagg --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin sealagg \
 && mkdir /federation \
 && chown sealagg:sealagg /federation \
 && chmod 0700 /federation
COPY --from=build /opt/sealagg /opt/sealagg
COPY --chmod=0555 deploy/healthcheck.py /opt/sealagg/libexec/healthcheck.py
RUN sealagg --help > /dev/null
# Numeric, so a runtime (or Kubernetes runAsNonRoot) can tell it is not root.
USER 10001:10001
VOLUME ["/federation"]
# gRPC (mutual TLS). Metrics, when [server].metrics_listen is set, are published by compose
# on the host's loopback only.
EXPOSE 50051
# Asks the standard gRPC health service over mutual TLS with <folder>/admin-kit (see the
# script). Set SEALAGG_HEALTHCHECK_ADDRESS if [server].listen uses another port. The start
# period covers numba compiling the kernels on a cold cache.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "/opt/sealagg/libexec/healthcheck.py"]
# `sealagg serve` stops cleanly on SIGTERM (Docker's default stop signal, named for clarity).
STOPSIGNAL SIGTERM
ENTRYPOINT ["sealagg"]
CMD ["serve", "--folder", "/federation"]
