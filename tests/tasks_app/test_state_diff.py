"""Masking a Terraform state before it is shown or diffed (pure: no database)."""

from __future__ import annotations

from tasks_app.state_diff import MASK, state_masked


def instance(attributes: dict, paths: list) -> dict:
    return {"version": 4, "resources": [{"mode": "managed", "type": "t", "name": "n",
                                         "instances": [{"attributes": attributes, "sensitive_attributes": paths}]}]}


def attrs(state: dict) -> dict:
    return state["resources"][0]["instances"][0]["attributes"]


def get_attr(name: str) -> dict:
    return {"type": "get_attr", "value": name}


def index(value, kind: str = "number") -> dict:
    return {"type": "index", "value": {"value": value, "type": kind}}


def test_it_masks_a_marked_attribute_and_every_copy_of_its_value():
    state = instance({"password": "p4ssw0rd-long", "echo": "prefix p4ssw0rd-long", "name": "web"},
                     [[get_attr("password")]])
    masked = attrs(state_masked(state))
    assert masked == {"password": MASK, "echo": f"prefix {MASK}", "name": "web"}
    assert attrs(state)["password"] == "p4ssw0rd-long"  # the input is left alone


def test_it_follows_list_indexes_and_map_keys():
    state = instance({"users": [{"name": "a", "key": "k-000001"}, {"name": "b", "key": "k-000002"}],
                      "tags": {"token": "t-secret-1", "env": "prod"}},
                     [[get_attr("users"), index(1), get_attr("key")], [get_attr("tags"), index("token", "string")]])
    masked = attrs(state_masked(state))
    assert masked["users"] == [{"name": "a", "key": "k-000001"}, {"name": "b", "key": MASK}]
    assert masked["tags"] == {"token": MASK, "env": "prod"}


def test_it_masks_sensitive_outputs_and_the_given_secrets_but_ignores_paths_that_lead_nowhere():
    state = {**instance({"id": "i-1", "note": "uses sv-123"}, [[get_attr("missing"), get_attr("x")]]),
             "outputs": {"pw": {"value": "out-secret-1", "sensitive": True}, "id": {"value": "i-1"}}}
    masked = state_masked(state, ["sv-123"])
    assert masked["outputs"] == {"pw": {"value": MASK, "sensitive": True}, "id": {"value": "i-1"}}
    assert attrs(masked) == {"id": "i-1", "note": f"uses {MASK}"}


def test_it_does_not_hunt_short_marked_values_everywhere():
    # A marked `true` or "1" is masked where it is marked, not in every other attribute.
    state = instance({"flag": "1", "count": "1", "other": True}, [[get_attr("flag")]])
    assert attrs(state_masked(state)) == {"flag": MASK, "count": "1", "other": True}
