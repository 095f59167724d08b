"""The AI models an agent can use."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from ..ai.catalogue import ai_model_catalogue


class AIProviderInfoSerializer(serializers.Serializer):
    provider = serializers.CharField(help_text='The prefix of ai_model, e.g. "openai".')
    name = serializers.CharField()
    configured = serializers.BooleanField(help_text="Whether the server has an API key for this provider.")
    key_variable = serializers.CharField(help_text="The environment variable that holds the provider's API key.")


class AIModelInfoSerializer(serializers.Serializer):
    id = serializers.CharField(help_text='The value for an agent\'s ai_model, e.g. "openai:gpt-4o-mini".')
    provider = serializers.CharField()
    model = serializers.CharField()
    name = serializers.CharField()
    description = serializers.CharField()
    available = serializers.BooleanField(help_text="Whether its provider has an API key configured.")


class AIModelCatalogueSerializer(serializers.Serializer):
    default = serializers.CharField(help_text="The ai_model of a new agent.")
    providers = AIProviderInfoSerializer(many=True)
    models = AIModelInfoSerializer(many=True)


class AIModelsView(APIView):
    """The AI models offered for agents, per provider, and which providers have a key (cached for a day).

    Any ``provider:model`` of a known provider is accepted as ``ai_model``; this is the curated list.
    """

    @extend_schema(responses={200: AIModelCatalogueSerializer})
    def get(self, request):
        return Response(ai_model_catalogue())
