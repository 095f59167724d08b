from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.authtoken.views import obtain_auth_token
from rest_framework.routers import DefaultRouter

from agents.api.views import AgentViewSet, ExecutionLogViewSet
from integrations.api.views import IntegrationViewSet
from sequences.api.views import SequenceViewSet
from triggers.api.views import TriggerViewSet

router = DefaultRouter()
router.register("agents", AgentViewSet, basename="agent")
router.register("triggers", TriggerViewSet, basename="trigger")
router.register("sequences", SequenceViewSet, basename="sequence")
router.register("integrations", IntegrationViewSet, basename="integration")
router.register("execution-logs", ExecutionLogViewSet, basename="execution-log")

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include(router.urls)),
    path("api/auth/token/", obtain_auth_token, name="api-token"),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("", include("agents.urls")),
]
