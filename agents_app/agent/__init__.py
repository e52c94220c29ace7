"""The agent process. It talks HTTP to `web` only and never imports Django's ORM, so it can
run in a Kubernetes pod on another network."""
