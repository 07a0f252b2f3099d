# sealagg appliance: the aggregation server and its admin CLI. No torch, no client extra.
#
#   docker build -t sealagg .
#   docker volume create sealagg-federation
#   docker run --rm -v sealagg-federation:/federation sealagg \
#       init --name acme --host aggregator.example.org
#   # The appliance listens on loopback until told otherwise; in a container set
#   #   [server]  listen = "0.0.0.0:50051"     in /federation/sealagg.toml
#   docker run -d --name sealagg -p 50051:50051 -v sealagg-federation:/federation sealagg
#   docker exec sealagg sealagg status         # SEALAGG_FOLDER=/federation is preset
#
# /federation holds the CA key, the server key and the audit signing key: keep the volume
# private, and back it up (it is also the state database and the model store).

# ---- build: install the project (without extras) into a venv --------------------------------
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/sealagg
WORKDIR /src
COPY . .
RUN /opt/sealagg/bin/pip install . \
 && /opt/sealagg/bin/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"

# ---- runtime ------------------------------------------------------------------------------------
FROM python:3.11-slim
ENV PATH=/opt/sealagg/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SEALAGG_FOLDER=/federation \
    NUMBA_CACHE_DIR=/tmp/numba-cache \
    SEALAGG_HEALTHCHECK_PORT=50051
RUN groupadd --system --gid 10001 sealagg \
 && useradd --system --uid 10001 --gid sealagg --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin sealagg \
 && mkdir /federation \
 && chown sealagg:sealagg /federation \
 && chmod 0700 /federation
COPY --from=build /opt/sealagg /opt/sealagg
RUN sealagg --help > /dev/null
USER sealagg:sealagg
VOLUME ["/federation"]
EXPOSE 50051
# Cheap liveness: can a TCP connection be opened to the gRPC port (no TLS handshake, no RPC)?
# Set SEALAGG_HEALTHCHECK_PORT if [server].listen uses another port.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, socket; socket.create_connection(('127.0.0.1', int(os.environ.get('SEALAGG_HEALTHCHECK_PORT', '50051'))), timeout=3).close()"]
ENTRYPOINT ["sealagg"]
CMD ["serve", "--folder", "/federation"]
