from django.apps import AppConfig


class CoreConfig(AppConfig):
    """Shared building blocks every other app may use: tokens, periods, statistics, formatting.

    It holds no tables; it is an app only so that its template filters and checks load.
    """

    name = "dashboard.core"
    label = "core"
