from django.apps import AppConfig


class TasksAppConfig(AppConfig):
    name = "tasks_app"

    def ready(self) -> None:
        from tasks_app import events  # imports models: only once the app registry is ready

        # Live sockets hear of every access change, whichever door made it (tasks_app/events.py).
        events.connect_access_signals()
