import gc

import pytest
from celery.signals import worker_process_init

from dashboard.core.process import YOUNG_THRESHOLD, tune_gc


@pytest.fixture
def restore_gc():
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_tune_gc_freezes_what_is_loaded_and_collects_young_objects_less_often(restore_gc):
    tune_gc()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold()[0] == YOUNG_THRESHOLD


def test_each_celery_pool_process_tunes_its_collector(restore_gc):
    import dashboard.celery  # noqa: F401  (connects the signal)

    gc.set_threshold(700, 10, 10)
    worker_process_init.send(sender=None)
    assert gc.get_threshold()[0] == YOUNG_THRESHOLD


def test_the_web_application_tunes_its_collector(restore_gc):
    import importlib

    import dashboard.wsgi

    gc.set_threshold(700, 10, 10)
    importlib.reload(dashboard.wsgi)
    assert gc.get_threshold()[0] == YOUNG_THRESHOLD
