"""manage.py up hands the servers their environment through supervisord's `environment=`:
whatever it writes must come back unchanged through supervisor's own parser (the code path
of supervisor.options: `%` expansion, then its key/value reader), and what cannot is left out
and named rather than mangled."""

from __future__ import annotations

from supervisor.datatypes import dict_of_key_value_pairs
from supervisor.options import expand

from tasks_app.management.commands.up import _representable, environment_line

VALUES = {
    "PLAIN": "value",
    "EMPTY": "",
    "COMMAS": "a,b,c",
    "EQUALS": "x=y",
    "SPACES": "with  spaces",
    "PERCENT": "50% and %(ENV_HOME)s",
    "DOUBLE": 'say "hi" now',
    "SINGLE": "it's",
    "HASH": "#not a comment",
    "URL": "postgresql://u:p@h:5432/db?sslmode=require&x=1",
    "BACKSLASH": r"C:\path\to",
    "COLORS": "rs=0:di=01;34:ln=01;36:*.tar=01;31",
}
NOT_REPRESENTABLE = {
    "BOTH_QUOTES": "a'b\"c",
    "NEWLINE": "line1\nline2",
    "EDGE_QUOTE": '"quoted"',
    "BASH_FUNC_x%%": "() { :; }",
}


def test_the_environment_survives_supervisors_parser():
    assert all(_representable(k, v) for k, v in VALUES.items())
    line = environment_line(VALUES)
    assert dict_of_key_value_pairs(expand(line, {"ENV_HOME": "/root"}, "environment")) == VALUES


def test_what_it_cannot_carry_is_left_out():
    assert not any(_representable(k, v) for k, v in NOT_REPRESENTABLE.items())
