from django.urls import path

from . import views

app_name = "generator"

urlpatterns = [
    path("", views.home, name="home"),
    path("generate/", views.generate, name="generate"),
    path("batches/", views.batch_list, name="batch_list"),
    path("batches/<int:batch_id>/", views.batch_detail, name="batch_detail"),
    path("batches/<int:batch_id>/cancel/", views.batch_cancel, name="batch_cancel"),
    path("batches/<int:batch_id>/resume/", views.batch_resume, name="batch_resume"),
    path(
        "batches/<int:batch_id>/delete-users/",
        views.batch_delete_users,
        name="batch_delete_users",
    ),
    path("batches/<int:batch_id>/users.csv", views.batch_users_csv, name="batch_users_csv"),
    path("users/", views.user_list, name="user_list"),
    path("api/batches/", views.api_batch_create, name="api_batch_create"),
    path("api/batches/<int:batch_id>/", views.api_batch_detail, name="api_batch_detail"),
]
