"""The Rego evaluator itself (tasks_app.policy_engine): regorus in a warm child process,
checked against OPA's documented semantics for what the platform's policies use (v1 syntax,
partial set rules, `some ... in`, `every`, sets read back as JSON arrays, sprintf), its
errors in `file:line:col: message` form, and its bounds (a long policy stopped, the
evaluator replaced, the next check answered)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks_app.policy_engine.pool import EvaluatorFailure, EvaluatorPool, Limits

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "policies"


@pytest.fixture(scope="module")
def engine():
    pool = EvaluatorPool(Limits(seconds=3, memory_bytes=256 * 1024 * 1024), size=1)
    pool.warm()
    yield pool
    pool.close()


def _evaluate(engine: EvaluatorPool, modules: dict[str, str], input_doc: dict, key: str | None = None) -> dict:
    return engine.evaluate(key=key or json.dumps(modules, sort_keys=True), modules=modules,
                           input_json=json.dumps(input_doc))


def _rc(address: str, kind: str, actions: list[str], after: dict | None) -> dict:
    return {"address": address, "type": kind, "change": {"actions": actions, "after": after}}


def test_the_shipped_examples_deny_and_warn_as_opa_would(engine):
    modules = {p.name: p.read_text() for p in sorted(EXAMPLES.glob("*.rego"))}
    plan = {"resource_changes": [
        _rc("aws_instance.big", "aws_instance", ["create"], {"instance_type": "m5.large"}),
        _rc("aws_instance.ok", "aws_instance", ["update"], {"instance_type": "t3.micro"}),
        _rc("aws_db_instance.gone", "aws_db_instance", ["delete"], None),
        _rc("aws_db_instance.changed", "aws_db_instance", ["update"], {}),
        *[_rc(f"null_resource.n{i}", "null_resource", ["no-op"], {}) for i in range(60)],
    ]}
    document = _evaluate(engine, modules, {"plan": plan, "workspace": {"name": "dev"}})["document"]
    types = document["terraform"]["allowed_instance_types"]
    databases = document["terraform"]["no_destroy_of_databases"]
    assert types["deny"] == ["aws_instance.big: instance type m5.large is not allowed (t3.micro, t3.small, "
                             "t3.medium are)"]
    assert types["warn"] == ["64 resource changes in workspace dev"]
    assert sorted(types["allowed"]) == ["t3.medium", "t3.micro", "t3.small"]  # a set, as a JSON array
    assert databases["deny"] == ["aws_db_instance.gone would be destroyed: a database is deleted only with an "
                                 "admin override"]
    assert databases["warn"] == ["aws_db_instance.changed is changed in place: check the maintenance window"]

    # Nothing to deny: a partial set rule that matches nothing is the empty set, not undefined.
    passing = _evaluate(engine, modules, {"plan": {"resource_changes": []}, "workspace": {"name": "prod-1"}})
    assert passing["document"]["terraform"]["allowed_instance_types"]["deny"] == []
    assert passing["document"]["terraform"]["allowed_instance_types"]["warn"] == []


def test_it_evaluates_v1_keywords_and_builtins_the_way_opa_documents_them(engine):
    module = """package t

default all_tagged := false

all_tagged if every rc in input.rcs { rc.tags.owner }

names contains rc.name if { some rc in input.rcs }

quoted := sprintf("%v and %s and %d", [input.s, input.s, count(input.rcs)])

first_prod := [n | some n in names; startswith(n, "prod-")]

owner_of := {rc.name: object.get(rc, ["tags", "owner"], "nobody") | some rc in input.rcs}
"""
    rcs = [{"name": "prod-a", "tags": {"owner": "x"}}, {"name": "dev-b", "tags": {}}]
    document = _evaluate(engine, {"t.rego": module}, {"rcs": rcs, "s": 'say "hi" ✓'})["document"]["t"]
    assert document["all_tagged"] is False
    assert sorted(document["names"]) == ["dev-b", "prod-a"]
    assert document["quoted"] == 'say "hi" ✓ and say "hi" ✓ and 2'  # %v of a string: the string (OPA)
    assert document["first_prod"] == ["prod-a"]
    assert document["owner_of"] == {"prod-a": "x", "dev-b": "nobody"}


def test_it_reports_errors_at_their_place(engine):
    broken = 'package broken\n\ndeny contains msg if {\n  msg := "a { in a string"\n'
    v0 = 'package old\n\ndeny[msg] { msg := "v0 syntax" }\n'
    errors = engine.check({"broken.rego": broken, "old.rego": v0, "good.rego": "package good\n\nx := 1\n"})
    assert set(errors) == {"broken.rego", "old.rego"}
    assert errors["broken.rego"].startswith("broken.rego:5:1: expecting `}`")
    assert "(the `{` at broken.rego:3:22 is unclosed)" in errors["broken.rego"]  # the string's brace skipped
    assert errors["old.rego"] == "old.rego:3:11: `if` keyword is required before rule body"
    assert "Stack backtrace" not in errors["old.rego"]

    # A runtime error (one rule, two values) is an answer naming the place, not a dead evaluator.
    conflict = "package c\n\nx := input.a if true\n\nx := input.b if true\n"
    answer = _evaluate(engine, {"c.rego": conflict}, {"a": 1, "b": 2})
    assert answer == {"error": "c.rego:5:1: rule conflicts with rule at c.rego:3:1"}
    assert _evaluate(engine, {"good.rego": "package good\n\nx := 1\n"}, {})["document"] == {"good": {"x": 1}}

    # A builtin given the wrong type is an error (OPA's strict-builtin-errors mode; OPA's default
    # makes the expression undefined): the policy fails closed.
    typed = 'package typed\n\ndeny contains "long" if {\n  startswith(input.n, "x")\n}\n'
    assert _evaluate(engine, {"typed.rego": typed}, {"n": 5}) == {
        "error": "typed.rego:4:19: `startswith` expects string argument. Got `5` instead"}


def test_a_policy_past_the_time_bound_is_stopped_and_the_evaluator_replaced(engine):
    # 2.7e10 iterations of a comprehension that keeps nothing: long, not large.
    slow = """package slow

deny contains "never" if {
  count([1 | some i in numbers.range(1, 3000); some j in numbers.range(1, 3000); some k in numbers.range(1, 3000); i == -1]) > 0
}
"""
    with pytest.raises(EvaluatorFailure, match="stopped after 3s.*the evaluator was replaced"):
        _evaluate(engine, {"slow.rego": slow}, {})
    answer = _evaluate(engine, {"ok.rego": "package ok\n\ndeny contains 1 if { input.x == 1 }\n"}, {"x": 1})
    assert answer["document"] == {"ok": {"deny": [1]}}


def test_the_engine_of_a_set_is_kept_and_given_each_checks_own_input(engine):
    module = {"a.rego": "package a\n\ndeny contains x if {\n  some x in input.xs\n  x > 1\n}\n"}
    seen = [sorted(_evaluate(engine, module, {"xs": xs}, key="kept")["document"]["a"]["deny"])
            for xs in ([1, 2, 3], [5], [])]
    assert seen == [[2, 3], [5], []]


def test_it_refuses_deep_nesting_before_the_parser_and_takes_long_lines(engine):
    # regorus's parser takes time exponential in nested arrays (24 deep: ~10 s): refused at once.
    deep = "package deep\n\nx := " + "[" * 24 + "]" * 24 + "\n"
    nested_in_text = 'package fine\n\n# [[[[[[[[[[[[[[[[[[[[\nx := "{{{{{{{{{{{{{{{{{{{{"\n'
    long_line = "package long\n\nallowed := {" + ", ".join(f'"t{i}.micro"' for i in range(2000)) + "}\n"
    errors = engine.check({"deep.rego": deep, "fine.rego": nested_in_text, "long.rego": long_line})
    assert errors == {"deep.rego": "deep.rego:3:22: brackets nested 17 deep (at most 16: the engine's parser takes "
                                   "time exponential in the nesting)"}
    assert len(_evaluate(engine, {"long.rego": long_line}, {})["document"]["long"]["allowed"]) == 2000
