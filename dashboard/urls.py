from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from dashboard.teams import sso
from dashboard.web.api import api
from dashboard.web.metrics import metrics

urlpatterns = [
    path("admin/", admin.site.urls),
    path("agent/", include("dashboard.fleet.install")),
    path("login/", auth_views.LoginView.as_view(extra_context={"sso_label": sso.login_label}), name="login"),
    path("oidc/", include("dashboard.teams.sso")),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("api/v1/", api.urls),
    path("account/", include("dashboard.accounts.urls")),
    path("jobs/", include("dashboard.jobs.urls")),
    path("economics/", include("dashboard.economics.urls")),
    path("alerts/", include("dashboard.alerts.urls")),
    path("metrics", metrics, name="metrics"),
    path("reports/", include("dashboard.reports.urls")),
    path("teams/", include("dashboard.web.team_pages")),
    path("", include("dashboard.web.urls")),
]
