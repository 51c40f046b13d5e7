from django.contrib import admin
from django.urls import include, path

from generator.views import healthz

urlpatterns = [
    path("admin/", admin.site.urls),
    path("django-rq/", include("django_rq.urls")),
    path("accounts/", include("django.contrib.auth.urls")),
    path("healthz/", healthz, name="healthz"),
    path("", include("generator.urls")),
]
