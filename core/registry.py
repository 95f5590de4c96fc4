"""A name -> class registry with self-registration and lazy discovery, shared by mixers, objectives
and tasks. Discovery imports every module of the package whose name does not start with `_`, so a
new file is picked up with no central list to edit."""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import types
import typing
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(ValueError):
    pass


class Registry(Generic[T]):
    def __init__(self, kind: str, package: str):
        self.kind = kind  # "mixer", "objective", "task": used in error messages
        self.package = package
        self._classes: dict[str, type[T]] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def deco(cls: type[T]) -> type[T]:
            old = self._classes.get(name)
            # the same module and class again (a module executed twice) is the same entry; any other class is
            # a clash, also one that shares the class name (a file copied from another, `class` line and all)
            if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
                raise ValueError(f"{self.kind} {name!r} registered twice ({old.__module__}, {cls.__module__})")
            cls.name = name  # type: ignore[attr-defined]
            self._classes[name] = cls
            return cls

        return deco

    def unregister(self, name: str) -> None:
        """Forget `name` (a test's temporary entry, so later tests never see it); unknown names are errors."""
        if name not in self._classes:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; registered: {', '.join(sorted(self._classes))}")
        del self._classes[name]

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        pkg = importlib.import_module(self.package)
        for mod in pkgutil.iter_modules(pkg.__path__):
            if not mod.name.startswith("_"):
                importlib.import_module(f"{self.package}.{mod.name}")

    def names(self) -> list[str]:
        self._load()
        return sorted(self._classes)

    def get(self, name: str) -> type[T]:
        self._load()
        if name not in self._classes:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; registered: {', '.join(sorted(self._classes))}")
        return self._classes[name]

    def options_of(self, name: str) -> dict[str, Any]:
        """Default options of one entry (its `Options` dataclass), for --list and results rows."""
        return dataclasses.asdict(self.get(name).Options())  # type: ignore[attr-defined]

    def make_options(self, name: str, values: dict[str, Any] | None) -> Any:
        return coerce_options(self.get(name).Options, values or {}, f"{self.kind} {name!r}")  # type: ignore[attr-defined]


def coerce_options(opts_cls: type, values: dict[str, Any], what: str) -> Any:
    """Build an options dataclass from a dict whose values may be CLI strings; unknown keys are errors."""
    fields = {f.name for f in dataclasses.fields(opts_cls)}
    hints = typing.get_type_hints(opts_cls)
    kwargs = {}
    for key, val in values.items():
        if key not in fields:
            raise ValueError(f"{what} has no option {key!r}; options: {', '.join(sorted(fields)) or '(none)'}")
        kwargs[key] = _coerce(key, val, hints[key])
    return opts_cls(**kwargs)


def _coerce(key: str, val: Any, typ: Any) -> Any:
    if not isinstance(val, str) or typ is str:
        return val
    if typing.get_origin(typ) in (typing.Union, types.UnionType):  # `int | None`: "none" or an int
        args = typing.get_args(typ)
        if type(None) in args and val.strip().lower() in ("none", "null"):
            return None
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return _coerce(key, val, rest[0])
        if str in rest:
            return val
    if typ not in (bool, int, float):  # never a CLI string passed on as, say, a tuple's value
        raise ValueError(f"option {key}={val!r}: an option of type {typ} cannot be given as text")
    try:
        if typ is bool:
            low = val.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        return typ(val)
    except ValueError:
        raise ValueError(f"option {key}={val!r} is not a valid {typ.__name__}") from None


def parse_kv(items: list[str] | None, flag: str) -> dict[str, str]:
    """["a=1", "b=x"] -> {"a": "1", "b": "x"}: the value syntax of --mixer-opt / --task-opt."""
    out: dict[str, str] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"{flag} takes KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def scoped_opts(items: list[str] | None, flag: str, names: list[str],
                registry: Registry) -> dict[str, dict[str, str]]:
    """--mixer-opt attention.head_dim=16 applies to one mixer; head_dim=16 to every selected mixer that
    has that option (an option no selected mixer has is an error, not silently ignored)."""
    per: dict[str, dict[str, str]] = {n: {} for n in names}
    for key, val in parse_kv(items, flag).items():
        scope, _, opt = key.rpartition(".")
        targets = [scope] if scope else [n for n in names if opt in registry.options_of(n)]
        if scope and scope not in names:
            raise ValueError(f"{flag} {key}={val}: {scope!r} is not among the selected ({', '.join(names)})")
        if not targets:
            raise ValueError(f"{flag} {key}={val}: no selected entry has option {opt!r}")
        for t in targets:
            per[t][opt] = val
            registry.make_options(t, per[t])  # validate now, not mid-grid
    return per
