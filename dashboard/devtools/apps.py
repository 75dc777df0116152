from django.apps import AppConfig


class DevtoolsConfig(AppConfig):
    """Tools for developing and measuring the dashboard, not for serving it: the fleet simulator
    behind ``manage.py simulate`` and the scale benchmark. Nothing at run time imports it."""

    name = "dashboard.devtools"
    label = "devtools"
