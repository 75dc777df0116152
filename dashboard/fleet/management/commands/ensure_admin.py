import os
import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create an admin user if there is none, and say how to log in."

    def handle(self, **options):
        User = get_user_model()
        if User.objects.filter(is_superuser=True).exists():
            self.stdout.write("Log in with your admin account (manage.py changepassword NAME resets it).")
            return
        username = os.environ.get("DASHBOARD_ADMIN_USER", "admin")
        password = os.environ.get("DASHBOARD_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
        User.objects.create_superuser(username=username, email="", password=password)
        note = settings.DATA_DIR / "admin-password.txt"
        note.write_text(f"{username}\n{password}\n")
        note.chmod(0o600)
        self.stdout.write(f"Created admin user. Log in as {username} / {password} (also saved in {note}).")
