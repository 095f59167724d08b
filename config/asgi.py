"""The ASGI application: HTTP (Django) and WebSockets (Channels) in one process."""
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
# Persistent connections under ASGI exhaust PostgreSQL; the psycopg pool is the fix here
# (shared/notes/measured-here.md). Ignored on SQLite. An explicit DATABASE_POOL wins.
os.environ.setdefault("DATABASE_POOL", "true")

from django.core.asgi import get_asgi_application  # noqa: E402

django_asgi_app = get_asgi_application()  # sets Django up before the imports below

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from config.routing import websocket_urlpatterns  # noqa: E402
from crm.asgi import WebhookIntake  # noqa: E402
from tenancy.middleware import WebSocketTenancyMiddleware  # noqa: E402

application = ProtocolTypeRouter(
    {
        # CRM webhooks are answered before Django's middleware (crm/asgi.py)
        "http": WebhookIntake(django_asgi_app),
        # a socket's consumer runs in its user's row-level security scope (tenancy/)
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(WebSocketTenancyMiddleware(URLRouter(websocket_urlpatterns)))
        ),
    }
)
