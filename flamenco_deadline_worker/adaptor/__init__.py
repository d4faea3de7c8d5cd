"""The adaptor runtime: keep an application warm and feed it many tasks.

Public API: ``Adaptor``, ``CommandAdaptor``, ``ManagedProcess``, ``RegexCallback``, ``AdaptorError``,
``EntryPoint``, ``PathMappingRule``.  Names load lazily so that ``daemon run`` (which imports only
``client``) stays light.
"""

from __future__ import annotations

import importlib

# Not typing.TYPE_CHECKING: importing typing costs ~5 ms on the light ``daemon run`` path.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .adaptor import Adaptor as Adaptor
    from .adaptor import AdaptorError as AdaptorError
    from .adaptor import CommandAdaptor as CommandAdaptor
    from .adaptor import ManagedProcess as ManagedProcess
    from .adaptor import RegexCallback as RegexCallback
    from .entrypoint import EntryPoint as EntryPoint
    from .pathmapping import PathMappingRule as PathMappingRule

_LAZY = {
    "Adaptor": "adaptor",
    "AdaptorError": "adaptor",
    "CommandAdaptor": "adaptor",
    "ManagedProcess": "adaptor",
    "RegexCallback": "adaptor",
    "EntryPoint": "entrypoint",
    "PathMappingRule": "pathmapping",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
