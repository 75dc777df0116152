"""The Celery app: `celery -A dashboard worker` and `celery -A dashboard beat`."""

import os

from celery import Celery
from celery.signals import worker_process_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")

app = Celery("dashboard")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_process_init.connect
def _tune_gc(**kwargs) -> None:
    # In each pool process, once it has loaded the project: the alert evaluation and the rollups
    # build as many short-lived objects per run as an ingest request (dashboard.core.process).
    from dashboard.core.process import tune_gc

    tune_gc()
