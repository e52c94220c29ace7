"""The Rego evaluator: a warm child process running regorus (Microsoft's Rego interpreter in
Rust), bounded in time and memory, and the pool that owns such children. Pure Python, no
Django: the platform's policy services (tasks_app.services.policy_checks) hand it modules
and an input, it answers."""
