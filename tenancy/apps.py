from django.apps import AppConfig


class TenancyConfig(AppConfig):
    name = "tenancy"
    verbose_name = "Tenancy (row-level security)"

    def ready(self) -> None:
        from . import signals  # noqa: F401  (connects the receivers)
