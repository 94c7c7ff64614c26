# zcompute-proxy container image.
#
#   docker build -t zcompute-proxy:local .
#   docker compose up --build -d                    # the sidecar pattern: docker-compose.yml
#   docker run --rm zcompute-proxy:local --help     # every subcommand (serve is the default)
#
# The proxy listens on 127.0.0.1:8080 inside the container (the safe default): use it as a
# sidecar sharing the network namespace of the container that calls it (see
# docker-compose.yml). Only set --listen 0.0.0.0:8080 together with a loopback-only
# `-p 127.0.0.1:8080:8080`: whoever reaches the port acts with the configured credentials.
#
# Pinned by tag; for fully reproducible builds pin the digest too
# (python:3.11-slim@sha256:...), and let a bot such as Renovate bump it.

# ---- builder: build a wheel of the project and install it into a self-contained venv ----
FROM python:3.11-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Only what the wheel needs (see .dockerignore): no tests, no secrets, no local venv.
COPY pyproject.toml README.md ./
COPY proxy ./proxy

# The wheel's dependencies are resolved from pyproject.toml; pin them with a constraints file
# if you need bit-for-bit rebuilds. pip precompiles the bytecode into the venv, which the
# runtime user cannot write to; pip and setuptools are not needed at run time.
RUN python -m venv /opt/zcompute-proxy \
    && python -m pip wheel --no-cache-dir --no-deps --wheel-dir /tmp/wheels . \
    && /opt/zcompute-proxy/bin/pip install --no-cache-dir /tmp/wheels/zcompute_proxy-*.whl \
    && /opt/zcompute-proxy/bin/pip uninstall --yes pip setuptools \
    && /opt/zcompute-proxy/bin/zcompute-proxy --version

# ---- final: the slim runtime with only the installed venv ----
FROM python:3.11-slim

LABEL org.opencontainers.image.title="zcompute-proxy" \
      org.opencontainers.image.description="Local authenticating reverse proxy for the Zadara zCompute REST API" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed, unprivileged uid/gid so file permissions (e.g. a mounted password file) can be
# planned for: `chown 10001 secrets/zcompute_password && chmod 600 secrets/zcompute_password`.
RUN groupadd --system --gid 10001 zcompute \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin zcompute

COPY --from=builder /opt/zcompute-proxy /opt/zcompute-proxy

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/zcompute-proxy/bin:$PATH \
    ZCOMPUTE_LOG_FORMAT=json

# `serve` also looks for ./zcompute-proxy.toml: mount a config file read-only as
# /etc/zcompute-proxy/zcompute-proxy.toml (or set ZCOMPUTE_CONFIG / --config). Created
# before USER so it stays owned by root.
WORKDIR /etc/zcompute-proxy
USER 10001:10001

EXPOSE 8080

# slim has no curl: ask /_proxy/health with the standard library, bypassing any HTTP(S)_PROXY
# set in the environment. open() raises (exit 1) on a refused connection, a timeout or any
# non-2xx answer. The proxy listens on 127.0.0.1:8080 unless --listen/ZCOMPUTE_LISTEN says
# otherwise; override the healthcheck if you change the port.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:8080/_proxy/health', timeout=4)"]

ENTRYPOINT ["zcompute-proxy"]
CMD ["serve"]
