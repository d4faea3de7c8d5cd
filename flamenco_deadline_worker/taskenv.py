"""What of the worker's environment a task process may see: everything but secrets and the worker's doors.

A task prints ``env`` as easily as anything else, and its log goes to the service: a variable that
holds a credential, or opens a door to the worker (its systemd notify socket, its ssh agent), is
withheld.  The rule is by name, so it also catches credentials an admin adds later.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# The worker's own configuration (FLAMENCO_WORKER_WORKER_SECRET among it) is the worker's business.
WITHHELD_PREFIXES = ("FLAMENCO_WORKER_",)

# Host credentials of AWS (the Deadline agent's own keys, never a job's) and doors into the worker.
WITHHELD_NAMES = frozenset({
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_CREDENTIAL_EXPIRATION",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "NOTIFY_SOCKET",
    "WATCHDOG_PID",
    "WATCHDOG_USEC",
    "SSH_AUTH_SOCK",
})

# Any name holding one of these words, whatever the case: API_TOKEN, DB_PASSWORD, MY_SECRET_KEY...
SECRET_WORDS = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL|PRIVATE_?KEY|API_?KEY|ACCESS_?KEY",
                          re.IGNORECASE)

# The host credential variables the Deadline agent reads and then takes out of its own environment.
HOST_CREDENTIAL_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_CREDENTIAL_EXPIRATION",
)


def withheld(name: str) -> bool:
    """True when a variable of this name must not reach a task process."""
    return (
        name in WITHHELD_NAMES
        or name.startswith(WITHHELD_PREFIXES)
        or SECRET_WORDS.search(name) is not None
    )


def task_environment(env: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """``env`` without the withheld variables, and the names withheld (sorted; never the values)."""
    kept: dict[str, str] = {}
    dropped: list[str] = []
    for name, value in env.items():
        if withheld(name):
            dropped.append(name)
        else:
            kept[name] = value
    return kept, sorted(dropped)
