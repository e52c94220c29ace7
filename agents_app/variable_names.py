"""Which names a workspace's `env` variables may take: one rule for the server (the API, the
workspace page and the admin refuse them: tasks_app/services/variables.py) and the agent
(which skips rows stored before the rule, or written around it: agents_app/agent/jobs.py).
Pure Python: the agent imports it without Django.

The sandbox is the wall: processes outside it (nice, bwrap, the agent) never get a job's
variables in their environment (agents_app/agent/sandbox.py). These names are refused on top
of that because of what they do inside it, to terraform and what it starts: they change how
programs load and resolve names, or where terraform keeps the state, the plan and the lock
the platform relies on. Names are compared without regard to case: no program needs a
lower-case spelling of one of them, and some read both.
"""

from __future__ import annotations

import re

# The variables glibc removes from the environment of setuid programs: each changes what a
# program loads or reads (libraries, character set converters, resolver settings, message
# catalogues, temporary files, time zone files). From glibc's sysdeps/generic/unsecvars.h
# (UNSECURE_ENVVARS), with GLIBC_TUNABLES and LD_USE_LOAD_BIAS of the releases that still
# list them; every other LD_* is refused by its prefix below.
GLIBC_UNSECURE_ENVVARS = frozenset({
    "GCONV_PATH", "GETCONF_DIR", "GLIBC_TUNABLES", "HOSTALIASES", "LD_AUDIT", "LD_DEBUG", "LD_DEBUG_OUTPUT",
    "LD_DYNAMIC_WEAK", "LD_HWCAP_MASK", "LD_LIBRARY_PATH", "LD_ORIGIN_PATH", "LD_PRELOAD", "LD_PROFILE",
    "LD_SHOW_AUXV", "LD_USE_LOAD_BIAS", "LOCALDOMAIN", "LOCPATH", "MALLOC_TRACE", "NIS_PATH", "NLSPATH",
    "RESOLV_HOST_CONF", "RES_OPTIONS", "TMPDIR", "TZDIR",
})

# Set by the platform for every job; a user's value would replace the platform's.
PLATFORM_NAMES = {
    "HOME": "the platform sets HOME to the job's own directory",
    "PATH": "the platform sets PATH: it decides which programs run",
    "TF_DATA_DIR": "it moves terraform's working data (.terraform) out of the job's directory",
    "TF_PLUGIN_CACHE_DIR": "the platform manages terraform's provider cache",
    "TF_CLI_CONFIG_FILE": "the platform sets terraform's CLI configuration (provider mirror, credentials)",
    "TF_WORKSPACE": "the platform chooses the state terraform uses",
    "TF_IN_AUTOMATION": "the platform sets how terraform runs",
    "TF_INPUT": "the platform sets how terraform runs (no prompts)",
}

# (prefix, why): a name that starts with one is refused.
PREFIXES = (
    ("LD_", "names starting with LD_ change how programs load"),
    ("TF_HTTP_", "names starting with TF_HTTP_ set the platform's state backend and its credential"),
    ("TF_CLI_ARGS", "names starting with TF_CLI_ARGS add options to every terraform command "
                    "(the plan file, locking and state handling the platform relies on)"),
    ("IAC_", "names starting with IAC_ are the platform's own settings"),
)

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def env_name_problem(name: str) -> str:
    """Why `name` may not be a job's environment variable ("" when it may), as a sentence
    that names the rule, e.g. "LD_PRELOAD: names starting with LD_ change how programs load
    and are refused". `TF_TOKEN_*` (a private registry's token) is allowed; the agent applies
    any token the platform sets itself after the user's (agents_app/agent/jobs.py)."""
    if not IDENTIFIER.match(name):
        return f"{name!r}: must be an identifier: letters, digits and underscores, not starting with a digit"
    upper = name.upper()
    for prefix, why in PREFIXES:
        if upper.startswith(prefix):
            return f"{name}: {why} and are refused"
    if upper in GLIBC_UNSECURE_ENVVARS:
        return (f"{name}: it changes what programs load or read (glibc ignores it for setuid programs) "
                "and is refused")
    if upper in PLATFORM_NAMES:
        return f"{name}: {PLATFORM_NAMES[upper]}, so it is refused"
    return ""
