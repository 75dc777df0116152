from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "dashboard.accounts"
    verbose_name = "Accounts"
