from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from dashboard.devtools import simulator as simulate
from dashboard.fleet.models import machine_name


class Command(BaseCommand):
    help = (
        "Enroll N virtual GPU machines and send their realistic samples to a dashboard over HTTP, "
        "through the agent's own spool, sender and client, from one process (load tests, demos)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--url", default="http://127.0.0.1:8000", help="the dashboard's base URL (default %(default)s)"
        )
        parser.add_argument("--machines", type=int, default=10, help="virtual machines (default %(default)s)")
        parser.add_argument("--gpus", type=int, default=8, help="GPUs per machine (default %(default)s)")
        parser.add_argument(
            "--interval",
            type=float,
            default=10.0,
            help="seconds per window, as the agent's --send-every (default %(default)s)",
        )
        parser.add_argument("--seconds", type=float, help="stop after this long (default: until Ctrl-C)")
        parser.add_argument(
            "--prefix", default="sim-", help="machine names are PREFIX0001, PREFIX0002, ... (default %(default)s)"
        )
        parser.add_argument(
            "--spool-dir", help="one SQLite spool per machine here (default: DATA_DIR/simulate/<prefix>/spool)"
        )
        parser.add_argument(
            "--token-file", help="tokens of the virtual machines (default: DATA_DIR/simulate/<prefix>/tokens.json)"
        )
        parser.add_argument(
            "--senders", type=int, default=32, help="threads sending for all machines (default %(default)s)"
        )
        parser.add_argument(
            "--batch-max",
            type=int,
            default=100,
            help="windows per request at most, as the agent's (default %(default)s)",
        )
        parser.add_argument(
            "--status-every", type=float, default=10.0, help="seconds between status lines (default %(default)s)"
        )
        parser.add_argument("--summary", help="write the run's figures to this JSON file at the end")
        parser.add_argument(
            "--enroll-only", action="store_true", help="enroll the machines, save their tokens, and exit"
        )

    def handle(self, **o):
        if o["machines"] < 1 or o["gpus"] < 0 or o["interval"] <= 0:
            raise CommandError("--machines must be at least 1, --gpus at least 0 and --interval above 0")
        try:
            machine_name(simulate.machine_names(o["machines"], o["prefix"])[-1])
        except ValidationError as exc:
            raise CommandError(f"--prefix {o['prefix']!r}: {exc.messages[0]}") from None
        simulate.main(
            o["url"],
            o["machines"],
            o["gpus"],
            o["interval"],
            seconds=o["seconds"],
            prefix=o["prefix"],
            spool_dir=o["spool_dir"],
            token_file=o["token_file"],
            senders=o["senders"],
            batch_max=o["batch_max"],
            status_every_s=o["status_every"],
            enroll_only=o["enroll_only"],
            summary=o["summary"],
            print_fn=lambda line: self.stdout.write(line),
        )
