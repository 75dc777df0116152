import os

from django.core.wsgi import get_wsgi_application

from dashboard.core.process import tune_gc

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
application = get_wsgi_application()
tune_gc()  # after the project is loaded: see the function
