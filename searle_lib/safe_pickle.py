"""Safe loading of the official SEARLE pickles (``concept_to_phrases.pkl``, ``image_names.pkl``).

The official code (miccunifi/SEARLE ``src/gpt_phrases_generation.py`` and ``src/oti_inversion.py``, reference
sections 4 and 5) stores plain Python data with ``pickle``: a dict str -> list[str] of phrases and a list of image
names. ``pickle.load`` on a file from the internet can run arbitrary code (a ``__reduce__`` that calls
``os.system``), so we never use it on such files. :func:`safe_load_pickle` reads them with an unpickler that
resolves no global at all (apart from the plain builtin containers, which old protocol-0/1 pickles may name) and
then checks that the result is made only of str, list, dict, tuple, int, float, bool and None.
"""
from __future__ import annotations

import builtins
import io
import os
import pickle
from pathlib import Path
from typing import Any

from .chunkstore import atomic_output

__all__ = ["ALLOWED_TYPES", "UnsafePickleError", "safe_load_pickle", "safe_loads", "atomic_pickle_dump"]

ALLOWED_TYPES: tuple[type, ...] = (str, list, dict, tuple, int, float, bool, type(None))

# Old pickle protocols may name these builtins with GLOBAL; calling them on allowed data is harmless.
_ALLOWED_GLOBALS = {
    (mod, name)
    for mod in ("builtins", "__builtin__")
    for name in ("str", "list", "dict", "tuple", "int", "float", "bool")
}


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle that references code or holds a type outside :data:`ALLOWED_TYPES`."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, source: str):
        super().__init__(file)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        # Never import the module: importing alone can run code.
        if (module, name) in _ALLOWED_GLOBALS:
            return getattr(builtins, name)
        raise UnsafePickleError(
            f"{self._source}: refusing to unpickle {module}.{name} (only str, list, dict, tuple, int, float, bool "
            "and None are allowed). This is not a plain-data SEARLE pickle; do not open it with pickle.load."
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self._source}: refusing to unpickle a persistent id ({pid!r})")


def _check_types(obj: Any, source: str) -> None:
    """Walk the loaded object iteratively (no recursion limit) and refuse any type outside the allowlist."""
    stack = [obj]
    while stack:
        x = stack.pop()
        t = type(x)
        if t is str or t is int or t is float or t is bool or x is None:
            continue
        if t is list or t is tuple:
            stack.extend(x)
        elif t is dict:
            stack.extend(x.keys())
            stack.extend(x.values())
        else:  # subclasses of allowed types are refused too: they could carry behaviour
            raise UnsafePickleError(
                f"{source}: refusing to unpickle {t} (only str, list, dict, tuple, int, float, bool and None "
                "are allowed)"
            )


def safe_loads(data: bytes, source: str = "<bytes>") -> Any:
    """Unpickle ``data`` with the restricted unpickler; ``source`` names it in errors."""
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), source).load()
    except UnsafePickleError:
        raise
    except Exception as e:  # truncated or not a pickle at all
        raise pickle.UnpicklingError(
            f"{source}: not a readable pickle ({type(e).__name__}: {e}); the file may be truncated or of "
            "another format"
        ) from e
    _check_types(obj, source)
    return obj


def safe_load_pickle(path: str | os.PathLike, expect: type | None = None) -> Any:
    """Load a plain-data pickle (official ``concept_to_phrases.pkl`` or ``image_names.pkl``) without running code.

    Args:
        path: the pickle file.
        expect: if given, the top-level type the file must hold (e.g. ``dict`` or ``list``).
    Returns:
        The unpickled object.
    Raises:
        FileNotFoundError: the file is absent.
        UnsafePickleError: it references any callable or class, or holds a disallowed type.
        pickle.UnpicklingError: it is truncated or not a pickle.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pickle file not found: {path}")
    obj = safe_loads(path.read_bytes(), str(path))
    if expect is not None and type(obj) is not expect:
        raise pickle.UnpicklingError(
            f"{path}: expected a pickled {expect.__name__}, found {type(obj).__name__}"
        )
    return obj


def atomic_pickle_dump(obj: Any, path: str | os.PathLike, protocol: int = 4) -> Path:
    """Pickle plain data to ``path`` via a temporary file and a rename, so a crash never leaves half a file.

    Protocol 4 is what Python 3.8 (the official environment) writes by default, so the official code can read it.
    """
    path = Path(path)
    _check_types(obj, str(path))  # write only what we would agree to read back
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return path
