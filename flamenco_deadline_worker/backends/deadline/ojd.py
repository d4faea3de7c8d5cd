"""openjd-model and openjd-sessions, imported with pydantic's validators left to be built on first use.

openjd-model defines some hundred pydantic models and pydantic builds the validator (and serializer)
of each as its class is created; this worker only ever validates a step template and an
environment, so the rest are never needed.  Import this module before anything imports
``openjd``: it imports openjd with pydantic's ``defer_build`` default turned on, then restores it.
Building the two validators on first use gives the same validation; the others are never built.
The two it validates are built right after the import, before the worker takes work.
"""

from __future__ import annotations

import sys


def _import_deferred() -> None:
    if "openjd.model" in sys.modules:
        return  # too late: someone imported it first, the validators are built
    try:
        from pydantic._internal._config import config_defaults
    except ImportError:  # a pydantic without that table: import as usual
        import openjd.model  # noqa: F401
        import openjd.sessions  # noqa: F401

        return
    defaults: dict[str, object] = config_defaults  # type: ignore[assignment]
    previous = defaults.get("defer_build", False)
    defaults["defer_build"] = True
    try:
        import openjd.model
        import openjd.model.v2023_09
        import openjd.sessions  # noqa: F401
    finally:
        defaults["defer_build"] = previous
    # The two the worker validates are built now, before it takes work, not while the first task waits.
    from openjd.model.v2023_09 import Environment, StepTemplate

    StepTemplate.model_rebuild(force=True)
    Environment.model_rebuild(force=True)


_import_deferred()
