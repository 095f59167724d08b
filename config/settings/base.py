"""Settings shared by every environment. Every value a deployment may change is an
environment variable with a working local default; the README lists them all."""
import ipaddress
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent.parent
LOCAL_DIR = BASE_DIR / ".local"  # runtime files of the embedded default (SQLite, static)

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)  # optional; absent is fine

DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = env.str("SECRET_KEY", default="")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
CORS_ALLOWED_ORIGINS = env.list("CORS_ALLOWED_ORIGINS", default=[])
CORS_ALLOW_CREDENTIALS = True  # the frontend may use session auth; CSRF still applies

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "channels",
    "corsheaders",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_q",
    "agents",
    "integrations",
    "crm",
    "triggers",
    "sequences",
    "observability",
    "tenancy",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # one line and the request metrics per request; after WhiteNoise: static files are not logged
    "observability.requestlog.RequestLogMiddleware",
    "corsheaders.middleware.CorsMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # the request's scope for row-level security: its user once Django or DRF knows it
    "tenancy.middleware.TenancyMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"
WSGI_APPLICATION = "config.wsgi.application"

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
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------
# No DATABASE_URL: an SQLite file tuned for a web server and a worker side by side
# (WAL, busy timeout, immediate transactions: see shared/notes/measured-here.md).
# PostgreSQL: persistent connections for WSGI servers and the worker; Django's psycopg
# pool for ASGI servers (config/asgi.py turns DATABASE_POOL on), because persistent
# connections under ASGI exhaust the server and the pool does not survive the worker's
# forked processes.
DATABASES = {
    "default": env.db(
        "DATABASE_URL", default=f"sqlite:///{LOCAL_DIR / 'db.sqlite3'}"
    )
}
_db = DATABASES["default"]
if _db["ENGINE"] == "django.db.backends.sqlite3":
    # Django's backend, waiting for SQLite's write lock in short steps (config/backends/sqlite3)
    _db["ENGINE"] = "config.backends.sqlite3"
    _db["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
    }
elif "postgresql" in _db["ENGINE"]:
    # Django's backend under row-level security (tenancy/): the application works as
    # DATABASE_APP_ROLE, which cannot bypass the policies; migrate as the login role.
    _db["ENGINE"] = "tenancy.backends.postgresql"
    # parameters sent apart from the statement, which psycopg then prepares once it has run a
    # few times, instead of quoted into it in Python (PostgreSQL's parse and plan, and the
    # worker's CPU, per statement)
    _db.setdefault("OPTIONS", {}).setdefault(
        "server_side_binding", env.bool("DATABASE_SERVER_SIDE_BINDING", default=True)
    )
    _db.setdefault("OPTIONS", {})["app_role"] = env.str(
        "DATABASE_APP_ROLE", default=f"{_db['NAME'][:59]}_app"
    )
    if env.bool("DATABASE_POOL", default=False):
        _db["CONN_MAX_AGE"] = 0
        _db.setdefault("OPTIONS", {})["pool"] = {
            "min_size": env.int("DATABASE_POOL_MIN_SIZE", default=2),
            "max_size": env.int("DATABASE_POOL_MAX_SIZE", default=10),
            "timeout": 10,
        }
    else:
        _db["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=600)
        _db["CONN_HEALTH_CHECKS"] = True

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# Anonymous views that find their tenant themselves, by a secret key, and so run in
# system context under row-level security (URL names; tenancy/middleware.py).
TENANCY_SYSTEM_VIEWS = ["crm-webhook", "telegram-webhook", "whatsapp-webhook", "twilio-webhook", "metrics"]

# --- Cache, channel layer, task queue ------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": env.str("CACHE_KEY_PREFIX", default="kommo-agents"),
        }
    }
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                # redis-py 8 reads with a 5 s socket timeout by default, which kills every
                # consumer idle for 5 s (channels_redis waits in a 5 s BZPOPMIN); no timeout
                # here, as before redis-py 8 (django/channels_redis#422).
                "hosts": [{"address": REDIS_URL, "socket_timeout": None}],
                "prefix": env.str("CHANNELS_PREFIX", default="kommo-agents"),
            },
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# How often an ASGI process reads live events written by other processes from the
# database when the channel layer cannot carry them (no REDIS_URL). See agents/realtime.py.
LIVE_EVENTS_POLL_SECONDS = env.float("LIVE_EVENTS_POLL_SECONDS", default=0.5)
# Live events are history for the activity page; older ones are deleted daily.
LIVE_EVENTS_RETENTION_DAYS = env.int("LIVE_EVENTS_RETENTION_DAYS", default=7)

Q_CLUSTER = {
    "name": "kommo-agents",
    "orm": "default",  # django-q2's ORM broker: the database is the queue
    "workers": env.int("Q_WORKERS", default=2),
    "timeout": env.int("Q_TIMEOUT", default=300),
    "retry": env.int("Q_TIMEOUT", default=300) + 60,
    "poll": env.float("Q_POLL", default=0.5),
    "catch_up": False,
    "save_limit": 1000,
    "ack_failures": True,
    "max_attempts": 5,  # a task that keeps failing is not retried forever
    "label": "Task queue",
}

# --- Auth, API ----------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # token first: an unauthenticated API call gets 401 with WWW-Authenticate
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "config.api.Pagination",
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "config.api.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Kommo AI sales agents API",
    "DESCRIPTION": "Agents, trigger rules, follow-up sequences, integrations and their execution log.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "OAS_VERSION": "3.1.0",  # pydantic emits JSON Schema 2020-12, which 3.1 uses
    # several models have a "status"; each gets its own named enum in the schema
    "ENUM_NAME_OVERRIDES": {
        "SequenceRunStatusEnum": "sequences.models.SequenceRun.Status",
        "SequenceStepStatusEnum": "sequences.models.SequenceStep.Status",
    },
    # 400/401/403/404 of every operation, so that clients (and the fuzz test) know them
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "config.api.document_error_responses",
    ],
}

# --- Google Calendar (integrations/google/) ----------------------------------------------
# The deployment's OAuth client ("Web application"), redirect URI {PUBLIC_BASE_URL}/google/oauth/callback.
GOOGLE_CLIENT_ID = env.str("GOOGLE_CLIENT_ID", default="")
GOOGLE_CLIENT_SECRET = env.str("GOOGLE_CLIENT_SECRET", default="")
GOOGLE_OAUTH_AUTHORIZE_URL = env.str(
    "GOOGLE_OAUTH_AUTHORIZE_URL", default="https://accounts.google.com/o/oauth2/v2/auth"
)
GOOGLE_OAUTH_TOKEN_URL = env.str("GOOGLE_OAUTH_TOKEN_URL", default="https://oauth2.googleapis.com/token")
GOOGLE_CALENDAR_BASE_URL = env.str("GOOGLE_CALENDAR_BASE_URL", default="https://www.googleapis.com/calendar/v3")

# The address the outside world reaches this server at: webhook and OAuth callback URLs.
PUBLIC_BASE_URL = env.str("PUBLIC_BASE_URL", default="http://127.0.0.1:8000")

# --- Outgoing HTTP (every client: CRM, messengers, calendar) ---------------------------
HTTP_CONNECT_TIMEOUT_SECONDS = env.float("HTTP_CONNECT_TIMEOUT_SECONDS", default=5)
HTTP_READ_TIMEOUT_SECONDS = env.float("HTTP_READ_TIMEOUT_SECONDS", default=30)

# --- AI models (agents/ai/) ------------------------------------------------------------
# Keys come from the environment only: never from the database, never through the API.
# An empty base URL means the vendor's own; OPENAI_BASE_URL may name any OpenAI-compatible server.
OPENAI_API_KEY = env.str("OPENAI_API_KEY", default="")
OPENAI_BASE_URL = env.str("OPENAI_BASE_URL", default="")
ANTHROPIC_API_KEY = env.str("ANTHROPIC_API_KEY", default="")
ANTHROPIC_BASE_URL = env.str("ANTHROPIC_BASE_URL", default="")
GEMINI_API_KEY = env.str("GEMINI_API_KEY", default="")
GEMINI_BASE_URL = env.str("GEMINI_BASE_URL", default="")
AI_TIMEOUT_SECONDS = env.float("AI_TIMEOUT_SECONDS", default=30)  # per attempt
AI_MAX_RETRIES = env.int("AI_MAX_RETRIES", default=2)  # on 429, 5xx, timeouts, connection errors
# agents/language.py: the languages a lead's message may be recognised in (ISO 639-1)
LANGUAGE_DETECTION_LANGUAGES = env.str("LANGUAGE_DETECTION_LANGUAGES", default="en,ru,es,pt,de,fr,it,uk,tr,ar,pl,kk")

# --- CRM (Kommo / amoCRM) ------------------------------------------------------------------
KOMMO_RATE_LIMIT_PER_SECOND = env.float("KOMMO_RATE_LIMIT_PER_SECOND", default=7)
KOMMO_AUTHORIZE_URL = env.str("KOMMO_AUTHORIZE_URL", default="https://www.kommo.com/oauth")
CRM_METADATA_CACHE_SECONDS = env.int("CRM_METADATA_CACHE_SECONDS", default=3600)
CRM_WEBHOOK_MAX_BYTES = env.int("CRM_WEBHOOK_MAX_BYTES", default=256 * 1024)
# Webhook key → integration, remembered per process (0: off). A regenerated key or a
# deactivated integration may still be accepted by other processes for this long.
CRM_WEBHOOK_TARGET_CACHE_SECONDS = env.float("CRM_WEBHOOK_TARGET_CACHE_SECONDS", default=2)
# Called in the worker with each stored CRM event, in order (like MIDDLEWARE): dotted
# paths of functions taking a crm.models.CrmEvent. Later features add theirs.
CRM_EVENT_HANDLERS = [
    "crm.handlers.log_event",
    "agents.handlers.forget_changed_lead",
    "agents.handlers.hand_off_when_the_team_writes",
    "triggers.execution.run_triggers",
    "sequences.handlers.on_crm_event",
]
# Called (in the worker) with each inbound messenger message before it is answered.
INBOUND_MESSAGE_HANDLERS = ["sequences.handlers.exit_on_reply"]
# How often `manage.py worker` hands due sequence steps to the queue.
SEQUENCE_DISPATCH_SECONDS = env.float("SEQUENCE_DISPATCH_SECONDS", default=1.0)
# A step "running" longer than this was interrupted (a worker killed): it is recovered.
# Longer than any step can take: an AI call with its retries, the CRM's rate limit.
SEQUENCE_STEP_TIMEOUT_SECONDS = env.int("SEQUENCE_STEP_TIMEOUT_SECONDS", default=600)
# A due step handed to the queue and not started within this is handed over again.
SEQUENCE_REQUEUE_SECONDS = env.int("SEQUENCE_REQUEUE_SECONDS", default=120)
# At most this many due steps wait in the queue; the rest wait in the database, in due order.
SEQUENCE_QUEUED_MAX = env.int("SEQUENCE_QUEUED_MAX", default=1000)

# --- Encrypted credentials ------------------------------------------------------------
# "id:base64-32-byte-key" entries, comma-separated, newest first. New ciphertexts use the
# first; every listed key can decrypt. `manage.py generate_encryption_key` makes one.
ENCRYPTION_KEYS = env.list("ENCRYPTION_KEYS", default=[])

# --- I18N, static -------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = env.path("STATIC_ROOT", default=LOCAL_DIR / "static")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

LOGIN_URL = "admin:login"

# Lines: "<time> <level> <logger> <event> key=value …" (LOG_FORMAT=plain) or one JSON object
# a line (LOG_FORMAT=json). MaskSecrets (config/logging.py) runs on the handler and on every
# logger that does not reach it, so no secret is written whichever way a record goes.
LOG_FORMAT = env.str("LOG_FORMAT", default="plain")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {
            "()": "config.logging.StructuredFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s %(message)s",
        },
        "json": {"()": "config.logging.JsonFormatter"},
    },
    "filters": {
        "mask_secrets": {"()": "config.logging.MaskSecrets"},
        "drop_queued_in_statement": {"()": "config.logging.DropQueuedInStatement"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json" if LOG_FORMAT == "json" else "plain",
            "filters": ["mask_secrets"],
        }
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # request lines print paths: masked at the logger too, before handlers other than
        # ours (mail_admins). Naming a logger here replaces its handlers, so those that do
        # not propagate get ours.
        "django.request": {"filters": ["mask_secrets"]},
        # the servers' access lines are replaced by observability's http.request line (one
        # per request, with the user and the duration); WARNING keeps them quiet
        "django.server": {
            "filters": ["mask_secrets"],
            "handlers": ["console"],
            "propagate": False,
            "level": "WARNING",
        },
        "uvicorn.access": {
            "filters": ["mask_secrets"],
            "handlers": ["console"],
            "propagate": False,
            "level": "WARNING",
        },
        # uvicorn's own messages go to its own handler unless they get ours
        "uvicorn": {"handlers": ["console"], "propagate": False},
        # django-q2 adds its own handler to this logger (a filter here survives that)
        "django-q": {"filters": ["drop_queued_in_statement", "mask_secrets"]},
    },
}

# --- Observability: metrics (issue 8) -------------------------------------------------
# GET /metrics (Prometheus) answers a request with "Authorization: Bearer <METRICS_TOKEN>"
# or from an address in METRICS_ALLOWED_NETWORKS (CIDRs, matched against the connecting
# address, not X-Forwarded-For); with neither set it answers 404.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
METRICS_ALLOWED_NETWORKS = env.list("METRICS_ALLOWED_NETWORKS", default=[])
for _network in METRICS_ALLOWED_NETWORKS:  # a typo stops the start, not every scrape with a 500
    try:
        ipaddress.ip_network(_network, strict=False)
    except ValueError as _error:
        raise environ.ImproperlyConfigured(f"METRICS_ALLOWED_NETWORKS: {_error}") from None
# The rendered /metrics output is reused for this long (each scrape reads every table).
METRICS_CACHE_SECONDS = env.float("METRICS_CACHE_SECONDS", default=5)
# Each process keeps its counts in memory and adds them to the database this often, and
# when it exits (observability/recorder.py). 0: only when asked (tests).
METRICS_FLUSH_SECONDS = env.float("METRICS_FLUSH_SECONDS", default=5)
# Hourly metric buckets older than this are folded into all-time totals by an hourly task.
METRICS_RETENTION_DAYS = env.int("METRICS_RETENTION_DAYS", default=30)

# --- Observability: live activity (issue 8) -------------------------------------------
# How many recent events the live activity page (/activity/) loads when it opens and keeps.
ACTIVITY_PAGE_EVENTS = env.int("ACTIVITY_PAGE_EVENTS", default=50)

# --- OAuth token rotation (issue 9) ---------------------------------------------------
# A daily task (integrations/rotation.py) renews every active OAuth integration's refresh
# token once it is this many days old, so that none ages past 30 days (seed §4.1).
OAUTH_ROTATE_AFTER_DAYS = env.int("OAUTH_ROTATE_AFTER_DAYS", default=25)
if not 1 <= OAUTH_ROTATE_AFTER_DAYS < 30:
    raise environ.ImproperlyConfigured("OAUTH_ROTATE_AFTER_DAYS must be between 1 and 29 (tokens rotate every 30 days)")
# A renewal that keeps failing is retried daily and reported as overdue (an error, the
# integration "failing") once the token is within this many days of 30.
OAUTH_ROTATE_ALERT_DAYS = env.int("OAUTH_ROTATE_ALERT_DAYS", default=3)
# How each integration type renews its refresh token (like CRM_EVENT_HANDLERS: integrations
# does not import crm). Dotted paths of functions taking an Integration and returning True
# when they renewed it, False when another process just had.
OAUTH_ROTATORS = {
    "kommo": "crm.connection.rotate",
    "google_calendar": "integrations.google.connection.rotate",
}
