# One image for web, worker and beat (see docker-compose.yml); `docker build -t hwdash .`
# The builder installs the hash-locked server requirements into /venv, builds the agent's wheel
# and collects the static files; the final stage copies those and the source, and nothing else
# (no compilers, no test tools: those are in requirements-dev.txt, which no stage installs).
ARG PYTHON_IMAGE=python:3.11.16-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /venv
COPY requirements.txt /tmp/requirements.txt
# The lock is complete (--no-deps) and every file is hash-checked; wheels only, so no compiler.
RUN /venv/bin/pip install --require-hashes --no-deps --only-binary=:all: -r /tmp/requirements.txt

COPY . /src
WORKDIR /src
# The wheel the dashboard serves to new machines (/agent/install.sh), when pyproject.toml has
# a [project]; without one the folder stays empty and the dashboard says so.
RUN mkdir -p /app/dist \
    && if grep -q '^\[project\]' pyproject.toml; then \
        /venv/bin/python -m pip wheel . --no-deps -w /app/dist; \
    else \
        echo "pyproject.toml has no [project]: no agent wheel in this image"; \
    fi
# Static files are collected now, not at every start; a throwaway data folder keeps the
# settings' side effects (a generated key, broker folders) out of the image.
RUN DASHBOARD_DATA_DIR=/tmp/build-data STATIC_ROOT=/app/staticfiles \
    /venv/bin/python manage.py collectstatic --noinput \
    && rm -rf /tmp/build-data

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/venv/bin:$PATH \
    DASHBOARD_DATA_DIR=/data \
    STATIC_ROOT=/app/staticfiles \
    AGENT_WHEEL_DIR=/app/dist
RUN useradd --system --create-home --uid 10001 dashboard \
    && mkdir -p /data \
    && chown dashboard:dashboard /data
COPY --from=builder /venv /venv
WORKDIR /app
# Code, static files and the wheel belong to root: the dashboard user can read, not change them.
COPY . /app
COPY --from=builder /app/staticfiles /app/staticfiles
COPY --from=builder /app/dist /app/dist
USER dashboard

EXPOSE 8000
# /healthz: the database and the broker answer (dashboard/core/health.py). Worker and beat
# replace this check with their own in docker-compose.yml.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
# Threads: each host's job long-poll (POST /api/v1/agent/jobs/next) holds one for up to JOB_POLL_WAIT_S.
CMD ["gunicorn", "dashboard.wsgi", "--bind", "0.0.0.0:8000", "--workers", "2", "--threads", "32", "--access-logfile", "-"]
