"""GET /metrics for Prometheus, and the admin's monitoring page (/admin/monitoring/)."""

from __future__ import annotations

import functools
import hmac
import ipaddress

from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured
from django.http import Http404, HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone
from django.views.decorators.http import require_GET
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from . import dashboard, exposition

CACHE_KEY = "observability:metrics"


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """The Prometheus text exposition, for a scraper with the token or on an allowed network.

    With neither METRICS_TOKEN nor METRICS_ALLOWED_NETWORKS set the endpoint does not
    exist (404): numbers about every tenant are never public by default. A wrong or
    missing token is 401 (403 when only networks are allowed). The output is rendered at
    most once per METRICS_CACHE_SECONDS (per cache: shared with Redis)."""
    refusal = _refusal(request)
    if refusal is not None:
        return refusal
    body = cache.get(CACHE_KEY)
    if body is None:
        body = exposition.render()
        if settings.METRICS_CACHE_SECONDS > 0:
            cache.set(CACHE_KEY, body, settings.METRICS_CACHE_SECONDS)
    return HttpResponse(body, content_type=CONTENT_TYPE_PLAIN_0_0_4)


def _refusal(request: HttpRequest) -> HttpResponse | None:
    token = settings.METRICS_TOKEN
    networks = allowed_networks(tuple(settings.METRICS_ALLOWED_NETWORKS))
    if not token and not networks:
        raise Http404("metrics are not enabled")
    if networks and _address_in(request.META.get("REMOTE_ADDR", ""), networks):
        return None
    if token:
        scheme, _, sent = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(sent.strip().encode(), token.encode()):
            return None
        response = HttpResponse("A valid bearer token is required.\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse("Not from an allowed network.\n", status=403, content_type="text/plain")


@functools.lru_cache(maxsize=8)
def allowed_networks(entries: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    try:
        return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in entries if entry.strip())
    except ValueError as exc:
        raise ImproperlyConfigured(f"METRICS_ALLOWED_NETWORKS: {exc}") from None


def _address_in(address: str, networks) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return any(ip.version == network.version and ip in network for network in networks)


def monitoring(request: HttpRequest, *, admin_site) -> TemplateResponse:
    """The monitoring page: the numbers of /metrics over the last 24 hours and 7 days, for
    the agents the user may see (all, or one with ``?agent=``)."""
    agents = dashboard.visible_agents(user=request.user)
    agent = None
    if request.GET.get("agent"):
        try:
            agent = agents.get(pk=int(request.GET["agent"]))
        except (ValueError, agents.model.DoesNotExist):
            raise Http404("No such agent") from None
    now = timezone.now()
    context = {
        **admin_site.each_context(request),
        "title": "Monitoring",
        "agents": agents,
        "agent": agent,
        "system": request.user.is_superuser,
        "windows": dashboard.windows(user=request.user, agent=agent, now=now),
        "integrations_now": dashboard.integrations_now(user=request.user, agent=agent),
        "now": now,
        "retention_days": settings.METRICS_RETENTION_DAYS,
        "flush_seconds": settings.METRICS_FLUSH_SECONDS,
    }
    return TemplateResponse(request, "admin/observability/monitoring.html", context)
