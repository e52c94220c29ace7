from django.urls import path

from tasks_app.dispatch import agent_api

urlpatterns = [
    path("register", agent_api.register, name="agent-register"),
    path("heartbeat", agent_api.heartbeat, name="agent-heartbeat"),
    path("claim", agent_api.claim, name="agent-claim"),
    path("jobs/<int:job_id>/configuration", agent_api.configuration, name="agent-job-configuration"),
    path("jobs/<int:job_id>/plan-file", agent_api.plan_file, name="agent-job-plan-file"),
    path("jobs/<int:job_id>/logs", agent_api.logs, name="agent-job-logs"),
    path("jobs/<int:job_id>/plan", agent_api.plan_upload, name="agent-job-plan"),
    path("jobs/<int:job_id>/finish", agent_api.finish, name="agent-job-finish"),
]
