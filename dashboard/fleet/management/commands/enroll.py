import socket
from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from dashboard.fleet.install import install_line
from dashboard.fleet.models import AgentToken, Machine, machine_name


class Command(BaseCommand):
    help = "Enroll a machine, print the line that installs its agent, and its new token on the last line (shown once)."

    def add_arguments(self, parser):
        parser.add_argument("name", help="machine name: letters, digits, '.', '_', '-' (a hostname works)")
        parser.add_argument(
            "--server",
            default=f"http://{socket.getfqdn()}:8000",
            help="this dashboard's URL as the machine reaches it (default: http://THIS-HOST:8000)",
        )
        parser.add_argument("--token-file", help="also write the token to this file (mode 600)")
        parser.add_argument(
            "--if-missing",
            action="store_true",
            help="do nothing if --token-file already holds a valid token for this machine",
        )
        parser.add_argument(
            "--new-token",
            action="store_true",
            help="the machine exists: issue another token (old ones work until revoked)",
        )

    def handle(self, name, server, token_file=None, if_missing=False, new_token=False, **options):
        try:
            machine_name(name)
        except ValidationError as exc:
            raise CommandError(f"{name!r}: {exc.messages[0]}") from None
        path = Path(token_file) if token_file else None
        if if_missing and path and path.exists():
            found = AgentToken.authenticate(path.read_text().strip())
            if found is not None and found.machine.name == name:
                self.stdout.write(f"{name} is already enrolled; its token is in {path}")
                return
        machine, created = Machine.objects.get_or_create(name=name)
        if not created and not (new_token or if_missing):
            raise CommandError(
                f"{name} is already enrolled. Use --new-token to issue another token; "
                "revoke old ones in the admin (Agent tokens)."
            )
        token = machine.issue_token(label="enroll")
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(token + "\n")
            path.chmod(0o600)
        self.stdout.write(
            f"{'Enrolled' if created else 'New token for'} {name}. On that machine, as root, run:\n"
            f"  {install_line(server, token)}\n"
            "The token is shown once:"
        )
        self.stdout.write(token)
