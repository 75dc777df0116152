"""A real OIDC provider for the single sign-on tests: django-oauth-toolkit in its own Django process.

``test_sso.py`` starts it with ``DJANGO_SETTINGS_MODULE=dashboard.teams.tests.oidc_provider.settings``,
an RSA key it generated and a SQLite file of its own; ``seed`` creates the user, its groups and the
dashboard's client. Nothing here imports the dashboard's apps.
"""
