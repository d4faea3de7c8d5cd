"""openjd-model and openjd-sessions, imported as they are.

An earlier version turned on pydantic's ``defer_build`` while openjd imported, by writing pydantic's
private default-config table, so that only the two validators this worker uses (a step template and
an environment) were built.  pydantic offers no public switch for models defined by another package,
so that is gone: openjd builds every model's validator at import, as it does in any program.
"""

from __future__ import annotations

import openjd.model  # noqa: F401
import openjd.model.v2023_09  # noqa: F401
import openjd.sessions  # noqa: F401
