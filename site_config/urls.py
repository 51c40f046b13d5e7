from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from generator import dashboard
from generator.views import healthz

urlpatterns = [
    path("admin/", admin.site.urls),
    # django-rq's views behind the dashboard's permission, and no API token in a URL.
    path("django-rq/", include((dashboard.urlpatterns(), "django_rq"))),
    # Login and logout only: password reset would need mail, and accounts are made here.
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("healthz/", healthz, name="healthz"),
    path("", include("generator.urls")),
]
