"""Lazy exports of a package (PEP 562), as diffusers' own `__init__` does: a name is imported from its module the
first time it is used, so importing one light module of a package does not load its heavy neighbours."""

import importlib
from collections.abc import Callable, Mapping


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], object], Callable[[], list]]:
    """The module `__getattr__` and `__dir__` of `package` that import each name of `exports` (name -> module)
    on first use."""

    def __getattr__(name: str) -> object:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name], package), name)

    def __dir__() -> list:
        return sorted({*vars(importlib.import_module(package)), *exports})

    return __getattr__, __dir__
