# Switchboard container image: one uvicorn worker per container.
#
#   docker build -t switchboard .
#   docker run --rm -p 127.0.0.1:8000:8000 --env-file .env \
#     -v "$PWD/routes.yaml:/config/routes.yaml:ro" -v switchboard-data:/data switchboard
#
# The build stage installs Switchboard and its runtime dependencies (not the development
# ones) into a virtual environment with uv, which takes seconds where pip took tens of
# seconds (reading the package index's long pages one package after another, then
# unpacking); the final stage copies that environment alone, so it holds neither the
# source, nor uv, nor build tools. See docs/deploy.md.
# tests/ship/test_container.py repeats these steps outside Docker and lints this file.

ARG PYTHON_IMAGE=python:3.11-slim-trixie

FROM ${PYTHON_IMAGE} AS build
# uv: bytecode compiled at install (the final image writes none), files copied (no cache
# to link from), the image's own Python (never a downloaded one).
ENV UV_NO_CACHE=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
RUN --mount=type=bind,from=ghcr.io/astral-sh/uv:0.13.9,source=/uv,target=/usr/local/bin/uv \
    uv venv /opt/switchboard \
    && uv pip install --python /opt/switchboard/bin/python .


FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/switchboard/bin:$PATH
COPY --from=build /opt/switchboard /opt/switchboard

# /data: the call log (SQLite), owned by the service's user. A volume mounted there starts
# as a copy of it, so the user can write to it even with a read-only root filesystem.
RUN groupadd --system --gid 10001 switchboard \
    && useradd --system --uid 10001 --gid switchboard --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin switchboard \
    && install -d -o 10001 -g 10001 -m 0750 /data
WORKDIR /srv/switchboard
USER 10001:10001

# Mount routes.yaml (and lists/ next to it) at /config; settings come from the
# environment (OPENAI_WEBHOOK_SECRET, OPENAI_API_KEY, ...; see .env.example). Every call
# is recorded in /data/calls.db: keep /data on a named volume so that it outlives the
# container (without one, Docker gives each container a new anonymous volume).
ENV SWITCHBOARD_HOST=0.0.0.0 \
    SWITCHBOARD_PORT=8000 \
    SWITCHBOARD_ROUTES_FILE=/config/routes.yaml \
    SWITCHBOARD_CALLS_DB=/data/calls.db
VOLUME ["/data"]
EXPOSE 8000

# Liveness. Slim images have no curl: urlopen raises (exit 1) on a refused connection,
# a timeout or any non-2xx answer.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SWITCHBOARD_PORT', '8000'), timeout=3)"]

# Exec form: switchboard (uvicorn) is PID 1 and gets SIGTERM from `docker stop`; it stops
# taking connections, finishes the requests in flight (up to 10 s) and exits.
STOPSIGNAL SIGTERM
ENTRYPOINT ["switchboard"]
CMD ["serve"]
