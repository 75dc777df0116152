from django.urls import path

from . import views

app_name = "fleet"

urlpatterns = [
    path("", views.overview, name="overview"),
    path("machines/<str:name>/", views.machine, name="machine"),
]
