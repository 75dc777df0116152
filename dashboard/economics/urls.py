from django.urls import path

from . import views

app_name = "economics"

urlpatterns = [
    path("", views.overview, name="overview"),
    path("machines/<str:name>/", views.machine, name="machine"),
]
