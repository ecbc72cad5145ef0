"""schemathesis hooks for tests/rest_fuzz.rs.

The fuzzer is free to pause, rotate, narrow, revoke and delete any token it finds, except the
ones it runs as: its stateful phase learns the caller's own id from GET /v1/whoami and would
otherwise delete its own credential, after which every answer is a 401 and the rest of the run
proves nothing. A request aimed at a protected id goes to a well-formed id that does not exist.
"""

import os

import schemathesis

PROTECTED = set(filter(None, os.environ.get("REST_FUZZ_PROTECTED_IDS", "").split(",")))
ELSEWHERE = "tok_000000000000000000000000"


@schemathesis.hook
def before_call(context, case, kwargs):
    if case.path_parameters and case.path_parameters.get("id") in PROTECTED:
        case.path_parameters["id"] = ELSEWHERE
