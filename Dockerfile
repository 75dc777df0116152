# One image for web, worker and beat (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DASHBOARD_DATA_DIR=/data

WORKDIR /app
COPY requirements.txt ./
COPY hwprobe/requirements.txt hwprobe/
RUN pip install -r requirements.txt

COPY . .
RUN useradd --system --create-home --uid 10001 dashboard \
    && mkdir -p /data \
    && chown dashboard:dashboard /data
USER dashboard

EXPOSE 8000
CMD ["gunicorn", "dashboard.wsgi", "--bind", "0.0.0.0:8000", "--workers", "2"]
