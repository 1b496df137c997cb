# syntax=docker/dockerfile:1
# The mplogin image: one image for the gateway, the auth workers and the sandbox.
#
#   docker build -t mplogin .
#   docker run --rm mplogin --help
#
# The subcommand is the container's command (ENTRYPOINT is the `mplogin` console script), so
# compose says `command: ["gateway"]`, `command: ["worker"]` or `command: ["sandbox", ...]`.
# Nothing secret is baked in: signing keys live in a volume (MPLOGIN_KEYS_DIR), the
# session_key encryption key and the database/broker credentials come from the environment,
# and the apps file (which holds only references to secrets) is mounted at run time.

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: install the project and its runtime dependencies into a virtualenv -------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/mplogin
WORKDIR /src
# The runtime dependencies first, read from pyproject.toml alone: a change to the code (or the
# README) reuses this layer, so a rebuild downloads nothing.
COPY pyproject.toml ./
RUN python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb")); print("\n".join(p["project"]["dependencies"] + p["build-system"]["requires"]))' \
        > /tmp/requirements.txt \
    && /opt/mplogin/bin/pip install -r /tmp/requirements.txt
# Only what the package build needs: no tests, no deploy files, no local state (.dockerignore).
# One COPY per package; a new package is one more line here and in .dockerignore.
COPY README.md ./
COPY shared ./shared
COPY gateway ./gateway
COPY auth_worker ./auth_worker
COPY mplogin ./mplogin
# A regular (non-editable) install without the dev extras; its dependencies are already there.
RUN /opt/mplogin/bin/pip install --no-deps --no-build-isolation . \
    && /opt/mplogin/bin/mplogin --help > /dev/null

# --- runtime -------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="mplogin" \
      org.opencontainers.image.description="Login service for mini-programs" \
      org.opencontainers.image.licenses="MIT"

ENV PATH="/opt/mplogin/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MPLOGIN_DATA_DIR=/var/lib/mplogin \
    MPLOGIN_KEYS_DIR=/var/lib/mplogin/keys

# A fixed non-root uid/gid, so bind-mounted key or secret files can be chowned to it.
RUN groupadd --system --gid 10001 mplogin \
    && useradd --system --uid 10001 --gid mplogin --home-dir /var/lib/mplogin \
        --no-create-home --shell /usr/sbin/nologin mplogin \
    && install -d -o mplogin -g mplogin -m 0700 /var/lib/mplogin /var/lib/mplogin/keys \
    && install -d -o mplogin -g mplogin -m 0755 /var/lib/mplogin/keys/public

COPY --from=build /opt/mplogin /opt/mplogin

USER mplogin:mplogin
WORKDIR /var/lib/mplogin
# No VOLUME here: compose mounts named volumes on /var/lib/mplogin/keys (private keys, workers
# only) and /var/lib/mplogin/keys/public (public halves, gateway and workers), which start with
# these directories' owner and mode (mplogin; 0700 and 0755).

EXPOSE 8080

# Suits the gateway (ready = broker connected); compose sets its own check for each service.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=2)"]

ENTRYPOINT ["mplogin"]
CMD ["gateway"]
