"""Where a connection file lives.

An absolute ``--connection-file`` is used as given.  A relative one is taken relative to
``$FDW_ADAPTOR_CONNECTION_DIR`` when it is set (the worker sets it for every task process to a
directory in its own home, so two workers on one host never share a daemon), else relative to the
current directory.
"""

from __future__ import annotations

import os

CONNECTION_DIR_ENV = "FDW_ADAPTOR_CONNECTION_DIR"


def connection_file_path(value: str) -> str:
    """The absolute path of connection file ``value``."""
    if os.path.isabs(value):
        return os.path.normpath(value)
    base = os.environ.get(CONNECTION_DIR_ENV) or os.getcwd()
    return os.path.normpath(os.path.join(base, value))
