"""Django settings, read from the environment (prefix IAC_, plus DATABASE_URL, REDIS_URL,
SECRET_KEY). Defaults run locally with embedded PostgreSQL and Redis under ./var/."""

from __future__ import annotations

import secrets
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from marshmallow.validate import Range

from iacplatform import embedded
from iacplatform.env import EnvError, env

POSITIVE = Range(min=0, min_inclusive=False, error="must be greater than 0")

BASE_DIR = Path(__file__).resolve().parent.parent

try:
    VAR_DIR = env.path("IAC_VAR_DIR", BASE_DIR / "var").resolve()
    DEBUG = env.bool("IAC_DEBUG", False)
    ALLOWED_HOSTS = env.list("IAC_ALLOWED_HOSTS", ["*"])
    CSRF_TRUSTED_ORIGINS = env.list("IAC_CSRF_TRUSTED_ORIGINS", [])
    _secret_key = env.str("SECRET_KEY", "")
    _database_url = env.str("DATABASE_URL", "")
    _redis_url = env.str("REDIS_URL", "")
    IAC_ENCRYPTION_KEY = env.str("IAC_ENCRYPTION_KEY", "")
    IAC_TERRAFORM_BIN = env.str("IAC_TERRAFORM_BIN", "")
    # Public URL of the web process, as agents and Terraform's http backend reach it.
    IAC_PUBLIC_URL = env.url("IAC_PUBLIC_URL", "http://127.0.0.1:8000")
    IAC_PUBLIC_URL = (IAC_PUBLIC_URL if isinstance(IAC_PUBLIC_URL, str) else IAC_PUBLIC_URL.geturl()).rstrip("/")
    IAC_AGENT_HEARTBEAT_SECONDS = env.float("IAC_AGENT_HEARTBEAT_SECONDS", 10.0, validate=POSITIVE)
    IAC_AGENT_OFFLINE_AFTER_SECONDS = env.float("IAC_AGENT_OFFLINE_AFTER_SECONDS", 120.0, validate=POSITIVE)
    IAC_WARMUP_EXPIRE_SECONDS = env.float("IAC_WARMUP_EXPIRE_SECONDS", 1800.0, validate=POSITIVE)
    IAC_WARMUP_MAX_RETRIES = env.int("IAC_WARMUP_MAX_RETRIES", 3, validate=Range(min=1))
    # Confirm while a warmup runs: the apply waits this long for it, then goes cold.
    IAC_WARMUP_WAIT_SECONDS = env.float("IAC_WARMUP_WAIT_SECONDS", 120.0, validate=POSITIVE)
    # How long a Confirm waits for the reserving agent before any agent takes the cold path.
    IAC_TARGET_CLAIM_TIMEOUT_SECONDS = env.float("IAC_TARGET_CLAIM_TIMEOUT_SECONDS", 3.0, validate=POSITIVE)
    IAC_CLAIM_LONGPOLL_SECONDS = env.float("IAC_CLAIM_LONGPOLL_SECONDS", 25.0, validate=POSITIVE)
    IAC_SWEEP_INTERVAL_SECONDS = env.float("IAC_SWEEP_INTERVAL_SECONDS", 5.0, validate=POSITIVE)
    IAC_MAX_CONFIG_BYTES = env.int("IAC_MAX_CONFIG_BYTES", 10 * 1024 * 1024, validate=POSITIVE)
    IAC_MAX_PLAN_BYTES = env.int("IAC_MAX_PLAN_BYTES", 50 * 1024 * 1024, validate=POSITIVE)
    DB_POOL = env.bool("IAC_DB_POOL", True)
    IAC_MAX_STATE_BYTES = env.int("IAC_MAX_STATE_BYTES", 50 * 1024 * 1024, validate=POSITIVE)
except EnvError as exc:  # pragma: no cover - exercised by tests/test_settings_env.py
    raise ImproperlyConfigured(str(exc)) from exc

VAR_DIR.mkdir(parents=True, exist_ok=True)

if not _secret_key:
    # Local default: a random key kept under ./var so sessions survive restarts.
    key_file = VAR_DIR / "secret_key"
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    _secret_key = key_file.read_text().strip()
SECRET_KEY = _secret_key

if not _database_url:
    _database_url = embedded.ensure_postgres(VAR_DIR)
if not _redis_url:
    _redis_url = "unix://" + str(embedded.ensure_redis(VAR_DIR))
REDIS_URL = _redis_url

DATABASES = {"default": dj_database_url.parse(_database_url, conn_max_age=0)}
DATABASES["default"]["ENGINE"] = "django.db.backends.postgresql"
# pgserver's URL names its unix socket dir as ?host=...; Django expects it in HOST.
if not DATABASES["default"].get("HOST") and "host" in DATABASES["default"].get("OPTIONS", {}):
    DATABASES["default"]["HOST"] = DATABASES["default"]["OPTIONS"].pop("host")
if not DATABASES["default"].get("NAME"):
    DATABASES["default"]["NAME"] = "postgres"
# A connection pool per process (psycopg_pool): every agent call would otherwise open a new
# PostgreSQL connection (~3 ms on the Confirm -> apply path).
if DB_POOL:
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {"min_size": 1, "max_size": 20, "timeout": 10}
# Separate test databases let several test runs share one server.
DATABASES["default"]["TEST"] = {"NAME": env.str("IAC_TEST_DB_NAME", "") or None}

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "django_htmx",
    "channels",
    "tasks_app",
    "agents_app",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "iacplatform.urls"
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
            ]
        },
    }
]
ASGI_APPLICATION = "iacplatform.asgi.application"
WSGI_APPLICATION = None

AUTH_PASSWORD_VALIDATORS = [{"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"}]
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True
STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "workspace-list"
LOGOUT_REDIRECT_URL = "login"
# Plan files and state are posted by agents as JSON with base64 bodies.
DATA_UPLOAD_MAX_MEMORY_SIZE = max(IAC_MAX_PLAN_BYTES, IAC_MAX_STATE_BYTES, IAC_MAX_CONFIG_BYTES) * 2

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "iacplatform.api_errors.exception_handler",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {"TITLE": "IaC platform API", "VERSION": "1", "SERVE_INCLUDE_SCHEMA": False}

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [{"address": REDIS_URL}]},
    }
}

CELERY_BROKER_URL = REDIS_URL.replace("unix://", "redis+socket://", 1) if REDIS_URL.startswith("unix://") else REDIS_URL
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE = {
    "sweep": {"task": "tasks_app.tasks.sweep", "schedule": IAC_SWEEP_INTERVAL_SECONDS},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env.log_level("IAC_LOG_LEVEL", "INFO")},
}
