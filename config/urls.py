from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.authtoken.views import obtain_auth_token
from rest_framework.routers import DefaultRouter

from agents.api.ai import AIModelsView
from agents.api.views import AgentViewSet, ConversationViewSet, ExecutionLogViewSet
from crm.api import views as crm_views
from integrations.api.views import IntegrationViewSet
from sequences.api.views import SequenceRunViewSet, SequenceViewSet
from triggers.api.views import TriggerViewSet

router = DefaultRouter()
router.register("agents", AgentViewSet, basename="agent")
router.register("triggers", TriggerViewSet, basename="trigger")
router.register("sequences", SequenceViewSet, basename="sequence")
router.register("sequence-runs", SequenceRunViewSet, basename="sequence-run")
router.register("integrations", IntegrationViewSet, basename="integration")
router.register("execution-logs", ExecutionLogViewSet, basename="execution-log")
router.register("conversations", ConversationViewSet, basename="conversation")

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include(router.urls)),
    path("api/auth/token/", obtain_auth_token, name="api-token"),
    re_path(r"^api/crm/fields/leads/?$", crm_views.LeadFieldsView.as_view(), name="crm-lead-fields"),
    re_path(r"^api/crm/fields/contacts/?$", crm_views.ContactFieldsView.as_view(), name="crm-contact-fields"),
    re_path(r"^api/crm/pipelines/?$", crm_views.PipelinesView.as_view(), name="crm-pipelines"),
    re_path(r"^api/crm/users/?$", crm_views.UsersView.as_view(), name="crm-users"),
    re_path(r"^api/crm/tags/?$", crm_views.TagsView.as_view(), name="crm-tags"),
    path("api/crm/oauth/start", crm_views.OAuthStartView.as_view(), name="crm-oauth-start-api"),
    re_path(r"^api/ai/models/?$", AIModelsView.as_view(), name="ai-models"),
    path("crm/oauth/start/<int:integration_id>", crm_views.oauth_start, name="crm-oauth-start"),
    path("crm/oauth/callback", crm_views.oauth_callback, name="crm-oauth-callback"),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("", include("crm.urls")),
    path("", include("agents.urls")),
    path("", include("integrations.google.urls")),
    path("", include("observability.metrics_urls")),
    path("", include("observability.activity_urls")),
]

# a URL no view matches answers JSON under /api/, like the API's own 404s
handler404 = "config.api.not_found"
