"""EntryPoint: gives an adaptor its command line.

    from flamenco_deadline_worker.adaptor import EntryPoint
    EntryPoint("my_package.my_adaptor:MyAdaptor").start()

Pass the adaptor as a ``"module:Class"`` string so that ``daemon run`` and ``daemon stop`` never import
it (nor the runtime): they only talk to the daemon.  A class object works too.
"""

from __future__ import annotations

import os
import sys

# Not typing.TYPE_CHECKING: importing typing costs ~5 ms on the light ``daemon run`` path.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

    from .adaptor import Adaptor


class EntryPoint:
    def __init__(self, adaptor: type[Adaptor] | str, prog: str | None = None) -> None:
        self._adaptor = adaptor
        self.prog = prog

    def main(self, argv: list[str] | None = None) -> int:
        args = list(sys.argv[1:] if argv is None else argv)
        from .client import fast_main

        code = fast_main(args)
        if code is not None:
            return code
        from .cli import main

        return main(self._adaptor, args, self.prog or _prog_name())

    def start(self, argv: list[str] | None = None) -> NoReturn:
        sys.exit(self.main(argv))


def _prog_name() -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        name = str(spec.name)
        return f"python -m {name[: -len('.__main__')] if name.endswith('.__main__') else name}"
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "adaptor"
