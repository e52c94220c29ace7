"""The TFE API v2 subset terraform's `cloud {}` block (and go-tfe / pytfe) use, under
/api/v2/: an edge like tasks_app/api.py. Views parse JSON:API, call the run, configuration,
state and workspace services, and render JSON:API; nothing here writes a status."""
