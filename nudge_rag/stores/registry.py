"""Which backend of a face serves which store class: one mechanism for both faces.

Each face keeps its backends in a package (``nudge_rag.langchain.backends``,
``nudge_rag.llama_index.backends``), one module per store. A backend class names the framework
store classes it serves in ``stores`` (``"langchain_chroma.Chroma"``: a class ``Chroma`` defined
in a module under ``langchain_chroma``) and registers itself with its face's
:class:`BackendRegistry` by decoration. The registry imports every module of the package the
first time it is asked, so a new store's backend is found by being there: no list to extend.
A store is served by the backend naming the most specific class of its MRO; a backend whose
``subclasses`` is False serves its classes exactly (a subclass may change the internals it
reaches into).

Example:
    .. code-block:: python

        REGISTRY = BackendRegistry("nudge_rag.langchain.backends")

        @REGISTRY.register
        class ChromaBackend(Backend):
            stores = ("langchain_chroma.Chroma",)

        REGISTRY.find(store)   # ChromaBackend, or None
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Generic, TypeVar

__all__ = ["BackendRegistry", "class_matches"]

B = TypeVar("B")


def class_matches(cls: type, qualified: str) -> bool:
    """Whether ``cls`` is ``qualified``: ``"<module prefix>.<ClassName>"``."""
    prefix, _, name = qualified.rpartition(".")
    module = cls.__module__
    return cls.__name__ == name and (module == prefix or module.startswith(prefix + "."))


class BackendRegistry(Generic[B]):
    """The backends of one face, found by the store classes they name (``stores``)."""

    def __init__(self, package: str) -> None:
        self.package = package
        self._backends: list[type[B]] = []
        self._loaded = False

    def register(self, backend: type[B]) -> type[B]:
        """Class decorator: add ``backend`` (it names its store classes in ``stores``)."""
        named = getattr(backend, "stores", ())
        if not named or not all(isinstance(s, str) and "." in s for s in named):
            msg = (
                f"{backend.__name__}.stores: found {named!r}; name the store classes it serves "
                "as 'module_prefix.ClassName', e.g. ('langchain_chroma.Chroma',)."
            )
            raise TypeError(msg)
        if backend not in self._backends:
            self._backends.append(backend)
        return backend

    def backends(self) -> list[type[B]]:
        """Every registered backend (the package's modules imported on the first call)."""
        if not self._loaded:
            pkg = importlib.import_module(self.package)
            for mod in pkgutil.iter_modules(pkg.__path__):
                if not mod.name.startswith("_") and mod.name != "base":
                    importlib.import_module(f"{self.package}.{mod.name}")
            self._loaded = True
        return list(self._backends)

    def find(self, store: Any) -> type[B] | None:
        """The backend serving ``store``'s class, or its nearest supported base class."""
        backends = self.backends()
        for depth, cls in enumerate(type(store).__mro__):
            for backend in backends:
                if depth and not getattr(backend, "subclasses", True):
                    continue
                if any(class_matches(cls, s) for s in getattr(backend, "stores", ())):
                    return backend
        return None

    def supported(self) -> str:
        """The store classes served, for messages (``"langchain_chroma.Chroma, ..."``)."""
        return ", ".join(s for b in self.backends() for s in getattr(b, "stores", ()))
