from django.urls import path

from . import views

app_name = "jobs"

urlpatterns = [
    path("", views.job_list, name="list"),
    path("jobs.csv", views.job_list_csv, name="list_csv"),
    path("new/", views.job_new, name="new"),
    path("<int:pk>/", views.job_page, name="job"),
    path("<int:pk>/cancel/", views.job_cancel, name="cancel"),
]
