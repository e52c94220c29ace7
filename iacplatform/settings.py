"""Django settings, read from the environment (prefix IAC_, plus DATABASE_URL, REDIS_URL,
SECRET_KEY). Defaults run locally with embedded PostgreSQL and Redis under ./var/."""

from __future__ import annotations

import os
import secrets
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
from croniter import croniter
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured
from marshmallow import ValidationError
from marshmallow.validate import OneOf, Range, Regexp

from iacplatform import embedded, logs
from iacplatform.env import EnvError, env

POSITIVE = Range(min=0, min_inclusive=False, error="must be greater than 0")


def _url_text(value: object) -> str:
    return (value if isinstance(value, str) else value.geturl()).rstrip("/")  # type: ignore[attr-defined]


def _allowed_host(url: str) -> str:
    host = urlsplit(url).hostname or ""
    return f"[{host}]" if ":" in host else host  # an IPv6 literal, as Django matches it


def _fernet_keys(keys: list[str]) -> None:
    """Refuse a malformed encryption key at start, not at the first secret written."""
    for number, key in enumerate(keys, 1):
        try:
            Fernet(key.strip().encode())
        except ValueError as exc:
            raise ValidationError(f"key {number} is not a Fernet key (32 url-safe base64-encoded bytes)") from exc


def _http_url_or_empty(value: str) -> None:
    parts = urlsplit(value)
    if value and (parts.scheme not in ("http", "https") or not parts.hostname):
        raise ValidationError("must be an http:// or https:// URL, e.g. https://k8s.example.test:6443")


BASE_DIR = Path(__file__).resolve().parent.parent

try:
    VAR_DIR = env.path("IAC_VAR_DIR", BASE_DIR / "var").resolve()
    DEBUG = env.bool("IAC_DEBUG", False)
    # Empty: the hosts of IAC_PUBLIC_URL and IAC_AGENT_URL plus localhost (set below).
    ALLOWED_HOSTS = env.list("IAC_ALLOWED_HOSTS", [])
    CSRF_TRUSTED_ORIGINS = env.list("IAC_CSRF_TRUSTED_ORIGINS", [])
    _secret_key = env.str("SECRET_KEY", "")
    _database_url = env.str("DATABASE_URL", "")
    _redis_url = env.str("REDIS_URL", "")
    IAC_ENCRYPTION_KEY = env.str("IAC_ENCRYPTION_KEY", "")
    # Key rotation: Fernet keys, the first encrypts, all decrypt (iacplatform/crypto.py).
    IAC_ENCRYPTION_KEYS = env.list("IAC_ENCRYPTION_KEYS", [], validate=_fernet_keys)
    # Retention (tasks_app/services/retention.py): days after a run ended before its plan
    # file / its log are deleted. State versions and audit events are never deleted.
    IAC_RETENTION_PLAN_DAYS = env.float("IAC_RETENTION_PLAN_DAYS", 90.0, validate=POSITIVE)
    IAC_RETENTION_LOG_DAYS = env.float("IAC_RETENTION_LOG_DAYS", 365.0, validate=POSITIVE)
    IAC_TERRAFORM_BIN = env.str("IAC_TERRAFORM_BIN", "")
    # What browsers use: links, cookies (Secure when https), HSTS.
    IAC_PUBLIC_URL = _url_text(env.url("IAC_PUBLIC_URL", "http://127.0.0.1:8000"))
    # How agents and terraform reach web: the jobs' state backend address and the --server of
    # the agents `manage.py up` starts. On Kubernetes, a Service name. Defaults to the public URL.
    IAC_AGENT_URL = _url_text(env.url("IAC_AGENT_URL", IAC_PUBLIC_URL))
    # `manage.py up`: a program supervisord starts counts as started once it has run this
    # long (each program's own time, 1 to 3 s, at most this); one that exits sooner failed to start.
    IAC_UP_START_SECONDS = env.int("IAC_UP_START_SECONDS", 3, validate=Range(min=0, max=60))
    # "Header: value" a TLS-terminating proxy sets on https requests (Django's
    # SECURE_PROXY_SSL_HEADER). Default with an https public URL: "X-Forwarded-Proto: https";
    # set it to "off" when web is not behind such a proxy (the header could then be forged).
    _proxy_ssl_header = env.str("IAC_SECURE_PROXY_SSL_HEADER", None)
    # HSTS max-age with an https public URL (0 turns HSTS off); one year by default.
    IAC_HSTS_SECONDS = env.int("IAC_HSTS_SECONDS", 365 * 24 * 3600, validate=Range(min=0))
    # Failed logins (per username and address) before the login is locked for the cool-off.
    IAC_LOGIN_FAILURE_LIMIT = env.int("IAC_LOGIN_FAILURE_LIMIT", 5, validate=POSITIVE)
    IAC_LOGIN_COOLOFF_MINUTES = env.float("IAC_LOGIN_COOLOFF_MINUTES", 15.0, validate=POSITIVE)
    IAC_AGENT_HEARTBEAT_SECONDS = env.float("IAC_AGENT_HEARTBEAT_SECONDS", 10.0, validate=POSITIVE)
    IAC_AGENT_OFFLINE_AFTER_SECONDS = env.float("IAC_AGENT_OFFLINE_AFTER_SECONDS", 120.0, validate=POSITIVE)
    IAC_WARMUP_EXPIRE_SECONDS = env.float("IAC_WARMUP_EXPIRE_SECONDS", 1800.0, validate=POSITIVE)
    IAC_WARMUP_MAX_RETRIES = env.int("IAC_WARMUP_MAX_RETRIES", 3, validate=Range(min=1))
    # The autoscaler (agents_app/services/autoscaler.py): defaults of a new pool's settings,
    # each editable per pool afterwards, within the bounds of agents_app.models.POOL_LIMITS.
    IAC_SCALE_UP_DELAY_SECONDS = env.int("IAC_SCALE_UP_DELAY_SECONDS", 30, validate=Range(min=0, max=86400))
    IAC_SCALE_DOWN_DELAY_SECONDS = env.int("IAC_SCALE_DOWN_DELAY_SECONDS", 900, validate=Range(min=1, max=7 * 86400))
    IAC_SCALE_COOLDOWN_SECONDS = env.int("IAC_SCALE_COOLDOWN_SECONDS", 900, validate=Range(min=0, max=7 * 86400))
    IAC_POD_START_WAIT_SECONDS = env.int("IAC_POD_START_WAIT_SECONDS", 60, validate=Range(min=1, max=86400))
    IAC_POD_REGISTER_DEADLINE_SECONDS = env.int("IAC_POD_REGISTER_DEADLINE_SECONDS", 180,
                                                validate=Range(min=1, max=86400))
    # How often the autoscaler looks at every pool (a Celery beat task).
    IAC_AUTOSCALE_INTERVAL_SECONDS = env.float("IAC_AUTOSCALE_INTERVAL_SECONDS", 5.0, validate=POSITIVE)
    # The local backend: SIGTERM to an agent's process group, SIGKILL after this long.
    IAC_POD_STOP_GRACE_SECONDS = env.float("IAC_POD_STOP_GRACE_SECONDS", 10.0, validate=POSITIVE)
    # Confirm while a warmup runs: the apply waits this long for it, then goes cold.
    IAC_WARMUP_WAIT_SECONDS = env.float("IAC_WARMUP_WAIT_SECONDS", 120.0, validate=POSITIVE)
    # A full pool releases a run's warm-dir reservation for a queued plan only once the
    # reservation is this old: a person confirming within it keeps the fast path, and a plan
    # waits at most this (plus a sweep) for that slot. 0: at once. docs/architecture.md.
    IAC_RESERVATION_GRACE_SECONDS = env.float("IAC_RESERVATION_GRACE_SECONDS", 30.0,
                                              validate=Range(min=0, max=86400))
    # How long a Confirm waits for the reserving agent before any agent takes the cold path.
    IAC_TARGET_CLAIM_TIMEOUT_SECONDS = env.float("IAC_TARGET_CLAIM_TIMEOUT_SECONDS", 3.0, validate=POSITIVE)
    # A queued plan waits this long for an agent that holds its workspace's warm plan dir
    # (and has a free slot) before any agent may take it (plan affinity).
    IAC_PLAN_AFFINITY_WAIT_SECONDS = env.float("IAC_PLAN_AFFINITY_WAIT_SECONDS", 2.0, validate=Range(min=0))
    # A bound on every wait: the defaults of a new pool's timeouts, each editable
    # per pool afterwards (AgentPool.*_seconds). A plan or apply running past its bound gets
    # SIGINT, then SIGKILL after its kill grace; a queued job with no online agent in its
    # pool errors after the no-agent bound; apply_pending is discarded after its bound (0: never).
    IAC_PLAN_TIMEOUT_SECONDS = env.int("IAC_PLAN_TIMEOUT_SECONDS", 3600, validate=POSITIVE)
    IAC_APPLY_TIMEOUT_SECONDS = env.int("IAC_APPLY_TIMEOUT_SECONDS", 7200, validate=POSITIVE)
    IAC_NO_AGENT_TIMEOUT_SECONDS = env.int("IAC_NO_AGENT_TIMEOUT_SECONDS", 1800, validate=POSITIVE)
    IAC_APPLY_PENDING_TIMEOUT_SECONDS = env.int("IAC_APPLY_PENDING_TIMEOUT_SECONDS", 0, validate=Range(min=0))
    IAC_PLAN_KILL_GRACE_SECONDS = env.int("IAC_PLAN_KILL_GRACE_SECONDS", 30, validate=POSITIVE)
    IAC_APPLY_KILL_GRACE_SECONDS = env.int("IAC_APPLY_KILL_GRACE_SECONDS", 900, validate=POSITIVE)
    IAC_CLAIM_LONGPOLL_SECONDS = env.float("IAC_CLAIM_LONGPOLL_SECONDS", 25.0, validate=POSITIVE)
    # The web process's GIL switch interval (sys.setswitchinterval): how long a thread that
    # computes (a view building its answer) may keep the event loop waiting, which serves the
    # agents' claim long-polls (Confirm's push is answered there). Python's default is 5 ms.
    IAC_WEB_GIL_SWITCH_MS = env.float("IAC_WEB_GIL_SWITCH_MS", 0.5, validate=POSITIVE)
    # Live-page websockets one user may hold open in one web process (iacplatform/live_consumer.py):
    # past it a new one is closed with 4429. A person has a few tabs; bench/live_viewers.py's
    # 200 viewers share one session and raise it for themselves.
    IAC_WS_MAX_PER_USER = env.int("IAC_WS_MAX_PER_USER", 50, validate=POSITIVE)
    # The pool a workspace created without one gets (by name); unset: the only pool the
    # creator may use, when there is exactly one.
    IAC_DEFAULT_POOL = env.str("IAC_DEFAULT_POOL", "")
    # The platform is one organization to terraform's `cloud {}` block (tasks_app/tfe/).
    IAC_ORGANIZATION = env.str("IAC_ORGANIZATION", "iac", validate=Regexp(
        r"^[A-Za-z0-9_-]{1,40}\Z", error="letters, digits, '-' and '_', 1 to 40 of them"))
    IAC_SWEEP_INTERVAL_SECONDS = env.float("IAC_SWEEP_INTERVAL_SECONDS", 5.0, validate=POSITIVE)
    # When the last Celery sweep is older than this (the broker, Redis, is down, or the
    # worker or beat), every web process runs the sweep itself at the normal interval
    # (tasks_app/sweep_fallback.py). 0 turns that fallback off.
    IAC_SWEEP_FALLBACK_AFTER_SECONDS = env.float(
        "IAC_SWEEP_FALLBACK_AFTER_SECONDS", 3 * IAC_SWEEP_INTERVAL_SECONDS, validate=Range(min=0)
    )
    IAC_MAX_CONFIG_BYTES = env.int("IAC_MAX_CONFIG_BYTES", 10 * 1024 * 1024, validate=POSITIVE)
    # Entries in an uploaded configuration (files and directories), checked while unpacking.
    IAC_MAX_CONFIG_FILES = env.int("IAC_MAX_CONFIG_FILES", 1000, validate=POSITIVE)
    # Runs from git (tasks_app/vcs/): connections may point at loopback / link-local hosts
    # (and plain http) only when this is on: a self-hosted forge on the same host, the tests.
    IAC_VCS_ALLOW_LOCAL_HOSTS = env.bool("IAC_VCS_ALLOW_LOCAL_HOSTS", False)
    # The biggest webhook body accepted (GitHub caps its own at 25 MB; a push's is far smaller).
    IAC_VCS_MAX_WEBHOOK_BYTES = env.int("IAC_VCS_MAX_WEBHOOK_BYTES", 5 * 1024 * 1024, validate=POSITIVE)
    # How often the VCS tick runs (stalled deliveries, ls-remote polls, reports to the forges).
    IAC_VCS_TICK_SECONDS = env.float("IAC_VCS_TICK_SECONDS", 2.0, validate=POSITIVE)
    # How long a git fetch or a forge call may take.
    IAC_VCS_TIMEOUT_SECONDS = env.int("IAC_VCS_TIMEOUT_SECONDS", 60, validate=POSITIVE)
    # A failed report to a forge is tried again after base * 2^attempts seconds, at most 600.
    IAC_VCS_REPORT_BACKOFF_SECONDS = env.float("IAC_VCS_REPORT_BACKOFF_SECONDS", 1.0, validate=POSITIVE)
    IAC_MAX_PLAN_BYTES = env.int("IAC_MAX_PLAN_BYTES", 50 * 1024 * 1024, validate=POSITIVE)
    # Policy checks (tasks_app.services.policy_checks): the bounds of one evaluation in the
    # worker's warm evaluator (a policy past them fails with that reason), a module's size.
    IAC_POLICY_TIMEOUT_SECONDS = env.float("IAC_POLICY_TIMEOUT_SECONDS", 10.0, validate=POSITIVE)
    IAC_POLICY_MEMORY_MB = env.int("IAC_POLICY_MEMORY_MB", 512, validate=Range(min=64))
    IAC_POLICY_MAX_MODULE_BYTES = env.int("IAC_POLICY_MAX_MODULE_BYTES", 256 * 1024, validate=POSITIVE)
    IAC_POLICY_EVALUATORS = env.int("IAC_POLICY_EVALUATORS", 2, validate=Range(min=1, max=32))
    DB_POOL = env.bool("IAC_DB_POOL", True)
    # How long a request waits for a pooled connection (PostgreSQL down: then it answers 503).
    IAC_DB_POOL_TIMEOUT_SECONDS = env.float("IAC_DB_POOL_TIMEOUT_SECONDS", 10.0, validate=POSITIVE)
    IAC_MAX_STATE_BYTES = env.int("IAC_MAX_STATE_BYTES", 50 * 1024 * 1024, validate=POSITIVE)
    # Behind a reverse proxy of ours: take the client's address (for the audit log) from
    # X-Forwarded-For. Off by default: a client could forge the header.
    IAC_TRUST_X_FORWARDED_FOR = env.bool("IAC_TRUST_X_FORWARDED_FOR", False)
    # A run's stored log; output beyond it is dropped (one marker line says so).
    IAC_MAX_LOG_BYTES = env.int("IAC_MAX_LOG_BYTES", 50 * 1024 * 1024, validate=POSITIVE)
    # Request bodies on every route but the uploads (configurations, state, agents' plans and
    # logs: their own limits above) are refused past this, before anything reads them
    # (iacplatform/limits.py): forms and JSON are small.
    IAC_MAX_REQUEST_BYTES = env.int("IAC_MAX_REQUEST_BYTES", 1024 * 1024, validate=POSITIVE)
    # Users' long-polls (`?wait=`) waiting at once in one web process: per user, and in all.
    # Past either, 429 with Retry-After. The agents' claim long-poll is not counted.
    IAC_LONGPOLL_MAX_PER_USER = env.int("IAC_LONGPOLL_MAX_PER_USER", 100, validate=POSITIVE)
    IAC_LONGPOLL_MAX_PER_PROCESS = env.int("IAC_LONGPOLL_MAX_PER_PROCESS", 1000, validate=POSITIVE)
    # The state diff page compares two versions only when neither is bigger than this.
    IAC_STATE_DIFF_MAX_BYTES = env.int("IAC_STATE_DIFF_MAX_BYTES", 2 * 1024 * 1024, validate=POSITIVE)
    # /metrics: scrapers send `Authorization: Bearer <token>` (iacplatform/views_metrics.py).
    # Unset: a random one kept in <var>/metrics_token (below; `manage.py up` says where).
    IAC_METRICS_TOKEN = env.str("IAC_METRICS_TOKEN", "")
    # The `kubernetes` pod backend (agents_app/pods/kubernetes.py). With an API URL, that server
    # (with the bearer token, if any); else the pod's service account when running in a
    # cluster; else a kubeconfig (this path, or the client's default ~/.kube/config).
    IAC_KUBERNETES_API_URL = env.str("IAC_KUBERNETES_API_URL", "", validate=_http_url_or_empty).rstrip("/")
    IAC_KUBERNETES_TOKEN = env.str("IAC_KUBERNETES_TOKEN", "")
    IAC_KUBERNETES_VERIFY_SSL = env.bool("IAC_KUBERNETES_VERIFY_SSL", True)
    IAC_KUBERNETES_CA_CERT = env.str("IAC_KUBERNETES_CA_CERT", "")
    IAC_KUBECONFIG = env.str("IAC_KUBECONFIG", "")
    # Every call to the Kubernetes API is bounded: a hung API server must not hang the reconciler.
    IAC_KUBERNETES_TIMEOUT_SECONDS = env.float("IAC_KUBERNETES_TIMEOUT_SECONDS", 10.0, validate=POSITIVE)
    # Notifications (tasks_app/workflows/notifications.py). A destination on a loopback,
    # link-local (cloud metadata) or private address is refused unless the site allows it.
    IAC_NOTIFY_ALLOW_PRIVATE_ADDRESSES = env.bool("IAC_NOTIFY_ALLOW_PRIVATE_ADDRESSES", False)
    IAC_NOTIFY_MAX_ATTEMPTS = env.int("IAC_NOTIFY_MAX_ATTEMPTS", 6, validate=Range(min=1, max=50))
    # Retries wait base * 2^(attempt-1) seconds, at most IAC_NOTIFY_BACKOFF_MAX_SECONDS.
    IAC_NOTIFY_BACKOFF_SECONDS = env.float("IAC_NOTIFY_BACKOFF_SECONDS", 10.0, validate=POSITIVE)
    IAC_NOTIFY_BACKOFF_MAX_SECONDS = env.float("IAC_NOTIFY_BACKOFF_MAX_SECONDS", 3600.0, validate=POSITIVE)
    IAC_NOTIFY_TIMEOUT_SECONDS = env.float("IAC_NOTIFY_TIMEOUT_SECONDS", 10.0, validate=POSITIVE)
    IAC_NOTIFY_INTERVAL_SECONDS = env.float("IAC_NOTIFY_INTERVAL_SECONDS", 2.0, validate=POSITIVE)
    # Drift checks (tasks_app/workflows/drift.py): the site's default schedule for workspaces
    # without their own (a 5-field cron expression, in each workspace's time zone; "": none),
    # and how often the scheduler looks for due checks.
    IAC_DRIFT_SCHEDULE = env.str("IAC_DRIFT_SCHEDULE", "")
    IAC_DRIFT_INTERVAL_SECONDS = env.float("IAC_DRIFT_INTERVAL_SECONDS", 30.0, validate=POSITIVE)
    # Email notifications go through Django's email backend (SMTP unless told otherwise).
    EMAIL_BACKEND = env.str("IAC_EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend")
    EMAIL_HOST = env.str("IAC_EMAIL_HOST", "localhost")
    EMAIL_PORT = env.int("IAC_EMAIL_PORT", 25, validate=Range(min=1, max=65535))
    EMAIL_HOST_USER = env.str("IAC_EMAIL_USER", "")
    EMAIL_HOST_PASSWORD = env.str("IAC_EMAIL_PASSWORD", "")
    EMAIL_USE_TLS = env.bool("IAC_EMAIL_USE_TLS", False)
    DEFAULT_FROM_EMAIL = env.str("IAC_EMAIL_FROM", "iac-platform@localhost")
except EnvError as exc:  # pragma: no cover - exercised by tests/test_settings_env.py
    raise ImproperlyConfigured(str(exc)) from exc

VAR_DIR.mkdir(parents=True, exist_ok=True)

# Web defaults -------------------------------------------------------------------------------
if not ALLOWED_HOSTS:
    # Not "*": a Host header naming another site is refused (it would otherwise reach
    # absolute URLs built from the request, e.g. password-reset links). Health endpoints
    # that probes call by pod IP skip this check (routed in iacplatform/asgi.py, before Django).
    ALLOWED_HOSTS = list(
        dict.fromkeys([_allowed_host(IAC_PUBLIC_URL), _allowed_host(IAC_AGENT_URL), "localhost", "127.0.0.1", "[::1]"])
    )
if not CSRF_TRUSTED_ORIGINS:
    # The public origin: a form posted through a proxy that rewrites the Host still passes.
    _public = urlsplit(IAC_PUBLIC_URL)
    CSRF_TRUSTED_ORIGINS = [f"{_public.scheme}://{_public.netloc}"]
PUBLIC_HTTPS = IAC_PUBLIC_URL.startswith("https://")
if _proxy_ssl_header is None:
    _proxy_ssl_header = "X-Forwarded-Proto: https" if PUBLIC_HTTPS else ""
if _proxy_ssl_header and _proxy_ssl_header.lower() != "off":
    _name, _, _value = _proxy_ssl_header.partition(":")
    if not _name.strip() or not _value.strip():
        raise ImproperlyConfigured(
            f'Environment variable "IAC_SECURE_PROXY_SSL_HEADER" invalid: {_proxy_ssl_header!r} is not "Header: value"'
        )
    SECURE_PROXY_SSL_HEADER = ("HTTP_" + _name.strip().upper().replace("-", "_"), _value.strip())
SESSION_COOKIE_SECURE = PUBLIC_HTTPS
CSRF_COOKIE_SECURE = PUBLIC_HTTPS
SECURE_HSTS_SECONDS = IAC_HSTS_SECONDS if PUBLIC_HTTPS else 0
# The platform's own host and its subdomains only (HSTS never reaches the parent domain).
SECURE_HSTS_INCLUDE_SUBDOMAINS = PUBLIC_HTTPS
# Browsers reach web over https only, with one exception: when IAC_AGENT_URL is plain http
# (an in-cluster Service), agents and terraform's state backend calls must not be redirected.
# Only with a proxy header to tell https requests apart: without one every proxied request
# would look like http and be redirected forever.
SECURE_SSL_REDIRECT = PUBLIC_HTTPS and "SECURE_PROXY_SSL_HEADER" in globals()
SECURE_REDIRECT_EXEMPT = (
    [r"^agent/", r"^api/v1/workspaces/\d+/state(/lock)?/?$"] if IAC_AGENT_URL.startswith("http://") else []
)
SILENCED_SYSTEM_CHECKS = [
    # HSTS preload is a promise about a whole registrable domain (example.com and every
    # subdomain), made by submitting that domain to the browsers' list: not this app's
    # decision for its own host. Everything else `check --deploy` asks for is set above.
    "security.W021",
]

if not _secret_key:
    # Local default: a random key kept under ./var so sessions survive restarts.
    key_file = VAR_DIR / "secret_key"
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    _secret_key = key_file.read_text().strip()
SECRET_KEY = _secret_key

if not IAC_METRICS_TOKEN:
    # /metrics always needs a token: user code on an agent sharing this host reaches every
    # address the web listens on, loopback included. Written 0600 from the start, whole,
    # then linked into place: of processes sharing the var dir, the first one's token wins
    # and nobody reads a half-written file.
    token_file = VAR_DIR / "metrics_token"
    if not token_file.exists():
        draft = VAR_DIR / f".metrics_token.{os.getpid()}"
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32))
        try:
            os.link(draft, token_file)
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    IAC_METRICS_TOKEN = token_file.read_text().strip()

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
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {"min_size": 1, "max_size": 20,
                                                             "timeout": IAC_DB_POOL_TIMEOUT_SECONDS}
# PostgreSQL may restart under running processes: the pool checks a connection before handing
# it out (Django passes psycopg_pool's ConnectionPool.check_connection to the pool; without a
# pool, Django's own check before reusing a connection), so no request or sweep gets one that
# died with the old server. A request that still meets an outage answers 503 (db_outage.py).
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
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
    "django.contrib.humanize",  # naturaltime: "12 seconds ago", "in 29 minutes" (the Confirm dialog)
    "rest_framework",
    "knox",
    "drf_spectacular",
    # Swagger UI and Redoc from static files: /api/docs/ and /api/redoc/ work without internet.
    "drf_spectacular_sidecar",
    "django_htmx",
    "axes",
    "channels",
    "tasks_app",
    "agents_app",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # A view that meets a database outage answers 503 + Retry-After (iacplatform/db_outage.py).
    "iacplatform.db_outage.DatabaseUnavailableMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    # Before the CSRF check, which reads a form's body: an oversized body is refused unread.
    "iacplatform.limits.RequestBodyLimitMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "iacplatform.middleware.RequestAddressMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last, as django-axes asks: it turns a locked-out login into the lockout page.
    "axes.middleware.AxesMiddleware",
]

# Login attempts are rate-limited (django-axes): after IAC_LOGIN_FAILURE_LIMIT failures for
# one username from one address, that login is refused, right password or not, until the
# cool-off has passed. Only password logins go through Django's authenticate(): API tokens,
# agent and job credentials do not, so automation is never locked out by someone's typos.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = IAC_LOGIN_FAILURE_LIMIT
AXES_COOLOFF_TIME = timedelta(minutes=IAC_LOGIN_COOLOFF_MINUTES)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/lockout.html"
# The same client address the audit log records (REMOTE_ADDR unless a trusted proxy's).
AXES_CLIENT_IP_CALLABLE = "iacplatform.middleware.client_address"

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
# Off: Django's check has one size for every route, too small for the uploads or too big for
# the forms. Each route's own limit is enforced before any body is read (iacplatform.limits).
DATA_UPLOAD_MAX_MEMORY_SIZE = None

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "iacplatform.auth.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "iacplatform.api_errors.exception_handler",
    "UNAUTHENTICATED_USER": None,
}
# Users' API tokens (`Authorization: Token <key>`): knox stores a digest only. No expiry by
# default (automation), no refresh; a user may set an expiry per token.
KNOX_TOKEN_MODEL = "tasks_app.ApiToken"
# knox's own migrations would create its default token table although our model replaces it
# (an unused table holding a foreign key to users, which blocks flushes): skip them.
MIGRATION_MODULES = {"knox": None}
REST_KNOX = {"TOKEN_TTL": None, "AUTO_REFRESH": False, "AUTH_HEADER_PREFIX": "Token"}
SPECTACULAR_SETTINGS = {
    "TITLE": "IaC platform API",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # Request and response components apart: a request's `minLength` / required fields and a
    # response's read-only ones are then each documented where they hold.
    "COMPONENT_SPLIT_REQUEST": True,
    # Error responses, constraints and links the views cannot express (iacplatform/api_schema.py).
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "iacplatform.api_schema.postprocess"],
    # Swagger UI and Redoc served from drf-spectacular-sidecar's static files, never a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # One enum for a run's status wherever it appears (a run, its log page, the filters).
    "ENUM_NAME_OVERRIDES": {"RunStatusEnum": "tasks_app.states.RunStatus",
                            "DeliveryStatusEnum": "tasks_app.workflows.states.DELIVERY_STATUS_CHOICES"},
}

CHANNEL_LAYERS = {
    "default": {
        # Redis pub/sub: a group message (a log chunk for 200 viewers of a run) is published
        # once and each web process receives it once and hands it to its own consumers in
        # memory. The core layer instead stores one copy per consumer and each process pops
        # them one by one (three round trips each), which costs web CPU and, under load,
        # latency (bench/live_viewers.py, 200 viewers). Pub/sub keeps nothing for a process
        # that is not listening, which the live pages do not need (a consumer that sees a gap
        # in the log reads it from the database; the rest is re-rendered on the next event or
        # reload).
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        # redis-py 8 reads with a 5 s socket timeout by default, the same as channels_redis'
        # blocking BZPOPMIN (brpop_timeout 5 s): an idle consumer's receive then raised
        # TimeoutError and Daphne closed its websocket (1011) every 5 s (channels_redis#422).
        # The read must outlast the blocking pop; a dead Redis is still noticed within 15 s.
        "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": 15, "socket_connect_timeout": 5}]},
    }
}

CELERY_BROKER_URL = REDIS_URL.replace("unix://", "redis+socket://", 1) if REDIS_URL.startswith("unix://") else REDIS_URL
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE = {
    "sweep": {"task": "tasks_app.tasks.sweep", "schedule": IAC_SWEEP_INTERVAL_SECONDS},
    "autoscale": {"task": "tasks_app.tasks.autoscale", "schedule": IAC_AUTOSCALE_INTERVAL_SECONDS},
    "vcs": {"task": "tasks_app.tasks.vcs_tick", "schedule": IAC_VCS_TICK_SECONDS},
    "notifications": {"task": "tasks_app.tasks.notifications_deliver", "schedule": IAC_NOTIFY_INTERVAL_SECONDS},
    "drift": {"task": "tasks_app.tasks.drift_checks", "schedule": IAC_DRIFT_INTERVAL_SECONDS},
}
if IAC_DRIFT_SCHEDULE and (len(IAC_DRIFT_SCHEDULE.split()) != 5 or not croniter.is_valid(IAC_DRIFT_SCHEDULE)):
    raise ImproperlyConfigured(f"IAC_DRIFT_SCHEDULE: '{IAC_DRIFT_SCHEDULE}' is not a 5-field cron expression")

# IAC_LOG_FORMAT: `text` (the message alone, as always) or `json` (one object per line with
# level, logger, timestamp and the run/job/agent ids bound where the work is done).
try:
    IAC_LOG_FORMAT = env.str("IAC_LOG_FORMAT", "text", validate=OneOf(logs.FORMATS, error="must be one of: {choices}"))
except EnvError as exc:
    raise ImproperlyConfigured(str(exc)) from exc
LOGGING = logs.logging_config(IAC_LOG_FORMAT, env.log_level("IAC_LOG_LEVEL", "INFO"))
if IAC_LOG_FORMAT == "json":
    # Celery replaces the root logger's handlers with its own text format unless told not
    # to; with JSON its records go through Django's LOGGING like everyone else's.
    CELERY_WORKER_HIJACK_ROOT_LOGGER = False
