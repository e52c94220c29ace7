from django.urls import path

from agents_app.consumers import PoolConsumer
from tasks_app.consumers import RunLogConsumer, RunPageConsumer
from tasks_app.consumers_workspaces import WorkspaceConsumer, WorkspacesConsumer

websocket_urlpatterns = [
    path("ws/runs/<int:task_id>/log/", RunLogConsumer.as_asgi()),
    path("ws/runs/<int:task_id>/", RunPageConsumer.as_asgi()),
    path("ws/pools/<int:pool_id>/", PoolConsumer.as_asgi()),
    path("ws/workspaces/", WorkspacesConsumer.as_asgi()),
    path("ws/workspaces/<int:workspace_id>/", WorkspaceConsumer.as_asgi()),
]
