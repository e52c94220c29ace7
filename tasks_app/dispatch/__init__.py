"""Dispatch: jobs, slots and warmups, the services that own them, and the agent-facing endpoints.

Models and transition tables: models.py, states.py. Services, from the top layer down
(.importlinter): agent_reports (what agents report: join, heartbeat, claim, logs, results,
offline) > warmups > job_cancels | job_output > jobs > job_payloads > slots > dispatch_log.
Edges: agent_api.py and claim.py (the agent protocol over HTTP, agent_urls.py). Capacity (pools,
agents, pods, freeze windows, the autoscaler) stays in agents_app; the run lifecycle in
tasks_app/services/runs.py sits between agent_reports and warmups."""
