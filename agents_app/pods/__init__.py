"""Pod backends: where a pool's agents run (`local` processes, `kubernetes` pods, `static`
self-hosted agents). One narrow interface in `backends.py`; the reconciler and the autoscaler
(agents_app/services/pods.py, autoscaler.py) are the only callers."""
