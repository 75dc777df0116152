"""Settings, read from the environment (see README "Configuration").

With nothing set, the dashboard runs on one host: SQLite and an embedded (filesystem) Celery
broker in DASHBOARD_DATA_DIR. Production sets DATABASE_URL, REDIS_URL and SECRET_KEY.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str = "") -> str:
    """A string from NAME, or from the file named by NAME_FILE (Docker/Kubernetes secrets)."""
    path = os.environ.get(f"{name}_FILE")
    if path:
        return Path(path).read_text().strip()
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    # A typo must not silently turn DEBUG on in production.
    raise ValueError(f"{name}={value!r} is not a boolean (use 1/0, true/false, yes/no, on/off)")


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in env_str(name, default).split(",") if item.strip()]


DATA_DIR = Path(env_str("DASHBOARD_DATA_DIR", str(BASE_DIR / "data"))).resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env_bool("DEBUG", False)

# SECRET_KEY: required from the environment when DEBUG is off (a system check says so);
# for local use one is generated once and kept in the data folder.
SECRET_KEY_FROM_ENV = bool(env_str("SECRET_KEY"))
if SECRET_KEY_FROM_ENV:
    SECRET_KEY = env_str("SECRET_KEY")
else:
    _key_file = DATA_DIR / "secret_key"
    if not _key_file.exists():
        _key_file.write_text(secrets.token_urlsafe(50))
        _key_file.chmod(0o600)
    SECRET_KEY = _key_file.read_text().strip()

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "axes",  # login lockout after repeated failures (LOGIN_FAILURE_LIMIT); admins unlock in the admin
    # Layers, lowest first: each app imports only those above it in this list (.importlinter).
    "dashboard.core",
    "dashboard.accounts",
    "dashboard.teams",
    "dashboard.fleet",
    "dashboard.jobs",
    "dashboard.alerts",
    "dashboard.economics",
    "dashboard.reports",
    "dashboard.devtools",
    "dashboard.web",
]

MIDDLEWARE = [
    "dashboard.core.health.HealthzMiddleware",  # first: probes call /healthz by IP (see its module)
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "dashboard.web.middleware.ContentSecurityPolicyMiddleware",
    "dashboard.web.middleware.BrowserTimeZoneMiddleware",
    # A NUL or lone surrogate in a path parameter or query value: 400 naming it, not a database 500.
    "dashboard.core.validation.StorableRequestMiddleware",
    "axes.middleware.AxesMiddleware",  # last: turns a locked-out login into the lockout page
]

# Login throttling (django-axes): LOGIN_FAILURE_LIMIT wrong passwords for one username from one
# address lock that pair out for LOGIN_LOCKOUT_MINUTES (0: until an admin deletes the access
# attempt in Admin -> Axes -> Access attempts, or runs `manage.py axes_reset_username NAME`).
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # first: refuses a locked-out pair before any password check
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = (env_int("LOGIN_LOCKOUT_MINUTES", 15) / 60) or None  # hours; None: until unlocked
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]  # a user elsewhere, or others here, can still log in
AXES_RESET_ON_SUCCESS = True  # a right password clears the earlier failures
AXES_LOCKOUT_TEMPLATE = "accounts/locked_out.html"
AXES_VERBOSE = False  # no banner at every start

ROOT_URLCONF = "dashboard.urls"
WSGI_APPLICATION = "dashboard.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "dashboard.alerts.context.alerts",
            ],
        },
    },
]

DATABASE_URL = env_str("DATABASE_URL")
if DATABASE_URL:
    # Persistent connections: per-request connects cut ingest throughput by about 3x (bench/ingest.py).
    DATABASES = {
        "default": dj_database_url.parse(
            DATABASE_URL, conn_max_age=env_int("CONN_MAX_AGE", 600), conn_health_checks=True
        )
    }
    if "postgresql" in DATABASES["default"]["ENGINE"] and not env_bool("DATABASE_JIT", False):
        # PostgreSQL compiles a query whose estimated cost passes a threshold, and the fleet-wide
        # reads of a range pass it at a few hundred machines: 0.6 s of compiling for a 0.14 s
        # query was measured, and the fleet page took 174 ms instead of 251 without it. The
        # day-long reads it helps gain ~6 % (bench/README.md, "Fleet-wide reads of the rollups").
        _options = DATABASES["default"].setdefault("OPTIONS", {})
        _options["options"] = f"{_options.get('options', '')} -c jit=off".strip()
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": DATA_DIR / "dashboard.sqlite3",
            "OPTIONS": {
                # The web server, the Celery worker and beat share the file: WAL lets readers
                # run beside the writer, IMMEDIATE avoids lock upgrades that fail under load.
                "timeout": 20,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
            # A file, not memory, so that integration tests can share it with a worker process.
            "TEST": {"NAME": str(DATA_DIR / "test-dashboard.sqlite3")},
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-gb"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True
FORMAT_MODULE_PATH = ["dashboard.web.formats"]  # ISO dates, 24-hour times, in the admin too

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(DATA_DIR / "staticfiles")))  # the image collects into /app/staticfiles
STATIC_ROOT.mkdir(exist_ok=True)  # whitenoise warns on every request without it
# Serve straight from static/ too, so a fresh checkout works without collectstatic.
WHITENOISE_USE_FINDERS = True

REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    CELERY_BROKER_URL = REDIS_URL
    CELERY_BROKER_TRANSPORT_OPTIONS: dict = {}
else:
    # Single-host mode: kombu's filesystem transport carries tasks between the web server and
    # the worker through files, so no Redis is needed. It has no broadcast (no remote revoke).
    _broker_dir = DATA_DIR / "broker"
    for _sub in ("queue", "processed", "control"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_URL = "filesystem://"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "store_processed": False,
        # kombu writes its exchange files here; by default it uses the working directory.
        "control_folder": str(_broker_dir / "control"),
    }

# The cache holds the per-minute counts of personal-token API calls (dashboard/accounts/ratelimit.py):
# in Redis every web worker shares them; without Redis each process counts alone.
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
API_TOKEN_RATE_PER_MIN = env_int("API_TOKEN_RATE_PER_MIN", 600)  # per user; past it 429 + Retry-After; 0: off

CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]  # never pickle: a broker message must not be able to run code
CELERY_TASK_IGNORE_RESULT = True  # nothing reads results; state lives in the database
CELERY_TIMEZONE = "UTC"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")
CELERY_BEAT_SCHEDULE = {
    "rollup": {"task": "dashboard.fleet.tasks.rollup", "schedule": 30.0},
    # Placement also runs on a tick: telemetry changes free memory without any job event.
    "place": {"task": "dashboard.jobs.tasks.place", "schedule": 15.0},
    "check-lost": {"task": "dashboard.jobs.tasks.check_lost", "schedule": 10.0},
    "retention": {"task": "dashboard.fleet.tasks.retention", "schedule": 3600.0},
    "alerts-evaluate": {"task": "dashboard.alerts.tasks.evaluate", "schedule": 30.0},
    "alerts-deliver": {"task": "dashboard.alerts.tasks.deliver", "schedule": 15.0},
    # The fleet page's busy-but-inefficient ranking, cached (dashboard/web/efficiency.py).
    "fleet-ranking": {"task": "dashboard.web.tasks.refresh_ranking", "schedule": 60.0},
}
# Past one server (docker compose --profile scale): rollups, placement and webhooks go to queues
# of their own, each drained by its own workers, so a slow webhook or a long rollup never delays
# placement. Off by default: the one worker drains the default queue, which then holds everything.
CELERY_SPLIT_QUEUES = env_bool("CELERY_SPLIT_QUEUES", False)
if CELERY_SPLIT_QUEUES:
    CELERY_TASK_ROUTES = {
        "dashboard.fleet.tasks.rollup": {"queue": "rollups"},
        "dashboard.fleet.tasks.retention": {"queue": "rollups"},
        "dashboard.web.tasks.refresh_ranking": {"queue": "rollups"},
        "dashboard.jobs.tasks.place": {"queue": "placement"},
        "dashboard.alerts.tasks.deliver": {"queue": "webhooks"},
    }

# Telemetry
OFFLINE_AFTER_S = env_int("OFFLINE_AFTER_S", 90)  # a machine silent for longer shows offline
INGEST_MAX_BYTES = env_int("INGEST_MAX_BYTES", 4 * 1024 * 1024)  # larger bodies get a 413
INGEST_MAX_FUTURE_S = env_int("INGEST_MAX_FUTURE_S", 300)  # tolerated clock skew of agents
# Retention in days (0: keep forever). Token counts feed RoI's lifetime value, so they stay by default.
RETENTION_RAW_DAYS = env_int("RETENTION_RAW_DAYS", 14)  # raw windows
RETENTION_MINUTE_DAYS = env_int("RETENTION_MINUTE_DAYS", 90)  # minute rollups
RETENTION_HOUR_DAYS = env_int("RETENTION_HOUR_DAYS", 0)  # hour rollups
RETENTION_THROUGHPUT_DAYS = env_int("RETENTION_THROUGHPUT_DAYS", 0)  # token counts per window
DATA_UPLOAD_MAX_MEMORY_SIZE = INGEST_MAX_BYTES + 1024

# Jobs
# A running job with no word from its worker is `unreachable` (it may well still run: hosts keep
# their jobs through a server outage), then `lost` once its host is heard from again while the
# worker stays silent, or once nothing at all is heard of it for much longer (docs/design.md).
JOB_UNREACHABLE_AFTER_S = env_int("JOB_UNREACHABLE_AFTER_S", 30)  # no heartbeat: unreachable
JOB_LOST_AFTER_S = env_int("JOB_LOST_AFTER_S", 30)  # host back (agent or worker heard), job still silent: lost
JOB_SILENT_LOST_AFTER_S = env_int("JOB_SILENT_LOST_AFTER_S", 1800)  # no word of the job at all: lost
JOB_CHECK_INTERVAL_S = env_int("JOB_CHECK_INTERVAL_S", 10)  # how often the beat applies these rules
CELERY_BEAT_SCHEDULE["check-lost"]["schedule"] = float(JOB_CHECK_INTERVAL_S)
JOB_CLAIM_TIMEOUT_S = env_int("JOB_CLAIM_TIMEOUT_S", 300)  # placed job no worker picked up
JOB_LOG_MAX_BYTES = env_int("JOB_LOG_MAX_BYTES", 8 * 1024 * 1024)  # log text stored per job
# Hosts long-poll POST /api/v1/agent/jobs/next: it answers when a job is placed there, else 204
# after JOB_POLL_WAIT_S. Placement wakes it through Redis; without Redis (or while it is down) the
# request looks at the database every JOB_POLL_INTERVAL_S, and with Redis every JOB_POLL_RECHECK_S.
JOB_POLL_WAIT_S = env_int("JOB_POLL_WAIT_S", 25)
JOB_POLL_INTERVAL_S = float(env_str("JOB_POLL_INTERVAL_S", "1"))
JOB_POLL_RECHECK_S = float(env_str("JOB_POLL_RECHECK_S", "5"))
IDEMPOTENCY_KEY_TTL_S = env_int("IDEMPOTENCY_KEY_TTL_S", 86400)  # POST /api/v1/jobs retries within this
# A folder holding a prebuilt hwprobe-*.whl (the Docker image's /app/dist); empty: /agent/ builds
# the wheel from this checkout on first request (dashboard/fleet/install.py).
AGENT_WHEEL_DIR = env_str("AGENT_WHEEL_DIR")

# Teams: fair share decays usage with this half-life (dashboard/teams/fairshare.py).
FAIRSHARE_HALF_LIFE_S = env_int("FAIRSHARE_HALF_LIFE_S", 7 * 86400)

# Single sign-on (OIDC, dashboard/teams/sso.py): off unless OIDC_RP_CLIENT_ID is set; local accounts
# keep working beside it. Endpoints from the discovery document unless set one by one.
OIDC_RP_CLIENT_ID = env_str("OIDC_RP_CLIENT_ID")
OIDC_RP_CLIENT_SECRET = env_str("OIDC_RP_CLIENT_SECRET")
OIDC_OP_DISCOVERY_URL = env_str("OIDC_OP_DISCOVERY_URL")  # https://idp.example.com/.well-known/openid-configuration
OIDC_OP_AUTHORIZATION_ENDPOINT = env_str("OIDC_OP_AUTHORIZATION_ENDPOINT")
OIDC_OP_TOKEN_ENDPOINT = env_str("OIDC_OP_TOKEN_ENDPOINT")
OIDC_OP_USER_ENDPOINT = env_str("OIDC_OP_USER_ENDPOINT")
OIDC_OP_JWKS_ENDPOINT = env_str("OIDC_OP_JWKS_ENDPOINT")
OIDC_RP_SIGN_ALGO = env_str("OIDC_RP_SIGN_ALGO", "RS256")
OIDC_RP_SCOPES = env_str("OIDC_RP_SCOPES", "openid email profile")
OIDC_GROUPS_CLAIM = env_str("OIDC_GROUPS_CLAIM", "groups")
OIDC_USERNAME_CLAIM = env_str("OIDC_USERNAME_CLAIM", "preferred_username")
OIDC_TEAM_ROLES = env_str("OIDC_TEAM_ROLES")  # "ml-infra=infra:admin,researchers=research:operator"
OIDC_TIMEOUT = env_int("OIDC_TIMEOUT_S", 10)
OIDC_USE_PKCE = True
LOGIN_REDIRECT_URL_FAILURE = "/login/?sso=failed"
if OIDC_RP_CLIENT_ID:
    AUTHENTICATION_BACKENDS.append("dashboard.teams.sso.Backend")  # after axes, which still sees every login

# E-mail: the weekly reports (dashboard/reports/scheduled.py) go out through this SMTP server.
EMAIL_HOST = env_str("EMAIL_HOST")  # empty: e-mail reports are not sent (webhooks still are)
EMAIL_PORT = env_int("EMAIL_PORT", 25)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)  # STARTTLS, usually port 587
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)  # TLS from the start, usually port 465
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT_S", 30)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "hwdash@localhost")
# Weekly reports: each team's go to its report_emails/report_webhook; the shared pool's machines' here.
REPORT_EMAILS = env_list("REPORT_EMAILS")
REPORT_WEBHOOK = env_str("REPORT_WEBHOOK")
CELERY_BEAT_SCHEDULE["weekly-reports"] = {"task": "dashboard.reports.tasks.weekly_reports", "schedule": 900.0}

# Alerts: webhook POSTs time out, and are retried with exponential backoff up to a number of tries.
ALERT_WEBHOOK_TIMEOUT_S = env_int("ALERT_WEBHOOK_TIMEOUT_S", 10)
ALERT_WEBHOOK_BACKOFF_S = env_int("ALERT_WEBHOOK_BACKOFF_S", 30)  # first retry; doubles each time, at most 1 h
ALERT_WEBHOOK_MAX_ATTEMPTS = env_int("ALERT_WEBHOOK_MAX_ATTEMPTS", 8)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    # axes logs every login at INFO ("Deleted 0 failed login attempts"); failures and lockouts are warnings.
    "loggers": {"django.server": {"level": "WARNING"}, "axes": {"level": "WARNING"}},
}

# HTTPS=1 (or the older SECURE_COOKIES=1) when users reach the dashboard over HTTPS, usually a
# proxy that terminates TLS in front of gunicorn: cookies only over HTTPS, plain HTTP redirected,
# and HSTS. The proxy must set X-Forwarded-Proto (overwriting what a client sent). `dev.py run`
# sets neither and stays on plain HTTP. /healthz answers before the redirect (core/health.py).
HTTPS = env_bool("HTTPS", env_bool("SECURE_COOKIES", False))
if HTTPS:
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = True
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = env_int("HSTS_SECONDS", 365 * 86400)
    # Both bind every subdomain of the domain (preload: in browsers, for months): the operator's call.
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("HSTS_INCLUDE_SUBDOMAINS", False)
    SECURE_HSTS_PRELOAD = env_bool("HSTS_PRELOAD", False)
    SILENCED_SYSTEM_CHECKS = [
        check
        for check, chosen in (("security.W005", SECURE_HSTS_INCLUDE_SUBDOMAINS), ("security.W021", SECURE_HSTS_PRELOAD))
        if not chosen
    ]
