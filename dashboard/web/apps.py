from django.apps import AppConfig


class WebConfig(AppConfig):
    """The top layer: pages that compose several apps' panels, /metrics and the API router.

    Every other app offers queries and panels; only this one puts them together, so no lower app
    ever imports a higher one (``.importlinter`` states the layers and CI checks them).
    """

    name = "dashboard.web"
    label = "web"
