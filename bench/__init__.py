"""Benchmarks that run against a real platform (Daphne, Celery, agents) on this machine.

`python -m bench.confirm_latency`: Confirm Apply -> `terraform apply` latency, per apply path."""
