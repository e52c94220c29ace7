from django.urls import path

from tasks_app.consumers import RunLogConsumer

websocket_urlpatterns = [
    path("ws/runs/<int:task_id>/log/", RunLogConsumer.as_asgi()),
]
