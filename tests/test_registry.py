"""The name -> class registry shared by mixers, objectives and tasks (core/registry.py), on a toy package
of its own written to a temporary directory: discovery, a name claimed twice, listing, forgetting, and
the coercion of CLI option strings. No real mixer or task is touched."""
from __future__ import annotations

import dataclasses
import importlib
import pathlib
import sys
import textwrap
import typing

import pytest

from core.registry import UnknownNameError, coerce_options, parse_kv

PKG = "registry_toy_pkg"

MODULES = {
    "__init__.py": """
        from core.registry import Registry
        REGISTRY = Registry("gadget", __name__)
        register = REGISTRY.register
        """,
    # registered in file order (a_zeta.py first): names() must not depend on it
    "a_zeta.py": """
        import dataclasses
        from registry_toy_pkg import register

        @register("zeta")
        class Zeta:
            @dataclasses.dataclass
            class Options:
                width: int = 4
                scale: float = 1.0
                fast: bool = False
                label: str = "z"
        """,
    "b_alpha.py": """
        from registry_toy_pkg import register

        @register("alpha")
        class Alpha:
            pass
        """,
    # a private helper module: discovery must leave it alone (it would fail if imported)
    "_helper.py": """
        raise ImportError("a private module was imported by discovery")
        """,
}


@pytest.fixture
def pkg(tmp_path, monkeypatch):
    root = tmp_path / PKG
    root.mkdir()
    for name, text in MODULES.items():
        (root / name).write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        yield importlib.import_module(PKG)
    finally:
        for k in [k for k in sys.modules if k == PKG or k.startswith(PKG + ".")]:
            del sys.modules[k]


def _module(pkg, name: str, text: str):
    """A further module of the toy package, imported."""
    (pathlib.Path(pkg.__path__[0]) / f"{name}.py").write_text(textwrap.dedent(text))
    return importlib.import_module(f"{PKG}.{name}")


def test_discovery_imports_the_public_modules_and_lists_names_sorted(pkg):
    """Every module not starting with `_` registers on first use; names() is sorted, not in the order the
    files happened to register (a_zeta.py registers 'zeta' before b_alpha.py's 'alpha'): --list and the
    grid's default mixer order must not change when a file is renamed."""
    assert list(pkg.REGISTRY._classes) == []  # nothing imported before first use
    assert pkg.REGISTRY.names() == ["alpha", "zeta"]
    assert list(pkg.REGISTRY._classes) == ["zeta", "alpha"]  # the premise: registered out of order
    assert f"{PKG}._helper" not in sys.modules
    assert pkg.REGISTRY.get("zeta").name == "zeta"  # the class learns its registered name


@pytest.mark.parametrize("module, cls", [("c_other", "Other"), ("d_copy", "Zeta")], ids=["another-class", "same-class-name"])
def test_a_name_claimed_by_a_second_class_is_an_error_naming_both_modules(pkg, module, cls):
    """Two different classes under one name: the later must not silently replace the earlier (which mixer a
    grid ran would depend on import order). Also when the second shares the first's class name: a new
    file copied from an existing one, `class` line and all, that forgot to change the registered name."""
    pkg.REGISTRY.names()
    with pytest.raises(ValueError, match=rf"gadget 'zeta' registered twice \({PKG}.a_zeta, {PKG}.{module}\)"):
        _module(pkg, module, f"""
            from registry_toy_pkg import register

            @register("zeta")
            class {cls}:
                pass
            """)
    assert pkg.REGISTRY.get("zeta").__module__ == f"{PKG}.a_zeta"


def test_reimporting_a_module_re_registers_its_class(pkg):
    """A module executed again (importlib.reload, a notebook cell run twice) makes a new class object of the
    same module and name: that is the same entry, not a clash, and the new class is the one served."""
    old = pkg.REGISTRY.get("zeta")
    mod = importlib.reload(sys.modules[f"{PKG}.a_zeta"])
    assert mod.Zeta is not old and pkg.REGISTRY.get("zeta") is mod.Zeta


def test_unregister_forgets_a_name_and_refuses_one_it_never_had(pkg):
    """A test's temporary entry is forgotten; forgetting a name never registered (a misspelt cleanup) is an
    error, not a silent no-op that leaves the real entry behind."""
    pkg.REGISTRY.names()
    pkg.REGISTRY.unregister("alpha")
    assert pkg.REGISTRY.names() == ["zeta"]
    with pytest.raises(UnknownNameError, match="unknown gadget 'alpha'; registered: zeta"):
        pkg.REGISTRY.get("alpha")
    with pytest.raises(UnknownNameError, match="unknown gadget 'alhpa'"):
        pkg.REGISTRY.unregister("alhpa")


def test_cli_option_strings_are_coerced_to_the_options_types(pkg):
    """--mixer-opt values arrive as strings: ints and floats are parsed, bools read the usual spellings
    of true and false, strs stay as given, and non-strings pass through."""
    opts = pkg.REGISTRY.make_options("zeta", {"width": "8", "scale": "1e-3", "fast": "On", "label": "007"})
    assert opts == pkg.REGISTRY.get("zeta").Options(width=8, scale=1e-3, fast=True, label="007")
    for text, value in (("1", True), ("true", True), ("YES", True), ("0", False), ("False", False),
                        ("no", False), ("off", False)):
        assert pkg.REGISTRY.make_options("zeta", {"fast": text}).fast is value, text
    assert pkg.REGISTRY.make_options("zeta", {"fast": True, "width": 3}).width == 3
    assert pkg.REGISTRY.options_of("zeta") == {"width": 4, "scale": 1.0, "fast": False, "label": "z"}


@pytest.mark.parametrize("key, text, typ", [("fast", "flase", "bool"), ("fast", "", "bool"),
                                            ("width", "8.5", "int"), ("scale", "fast", "float")])
def test_an_option_string_that_is_not_of_its_type_is_an_error(pkg, key, text, typ):
    """A misspelt bool ('flase') must not quietly mean False (or True): it is refused, as a bad int is."""
    with pytest.raises(ValueError, match=rf"option {key}='{text}' is not a valid {typ}"):
        pkg.REGISTRY.make_options("zeta", {key: text})


@dataclasses.dataclass
class _Later:
    """Options a future mixer may declare: optional numbers, an optional text, a tuple."""
    window: int | None = None
    rate: typing.Optional[float] = 0.5
    tag: str | None = None
    sizes: tuple[int, ...] = (1, 2)


def test_optional_options_take_none_or_their_type_and_other_types_refuse_text():
    """Adding a mixer is adding one file, and its options may be `int | None`: "16" must become 16 (not
    the string "16", which a mixer would only trip over later, or treat as true), "none" None, and a bad
    number the usual error. A type text cannot be turned into (a tuple) refuses text instead of passing
    the string on."""
    got = coerce_options(_Later, {"window": "16", "rate": "NONE", "tag": "none"}, "toy")
    assert got == _Later(window=16, rate=None, tag=None) and isinstance(got.window, int)
    assert coerce_options(_Later, {"rate": "2e-1", "tag": "x"}, "toy") == _Later(rate=0.2, tag="x")
    with pytest.raises(ValueError, match=r"option window='16x' is not a valid int"):
        coerce_options(_Later, {"window": "16x"}, "toy")
    with pytest.raises(ValueError, match=r"option sizes='3,4': an option of type .* cannot be given as text"):
        coerce_options(_Later, {"sizes": "3,4"}, "toy")
    assert coerce_options(_Later, {"sizes": (3, 4)}, "toy").sizes == (3, 4)  # (not text: as given)


def test_coerce_options_names_the_options_there_are():
    @dataclasses.dataclass
    class Opts:
        b: int = 1
        a: str = "x"

    with pytest.raises(ValueError, match=r"^toy has no option 'c'; options: a, b$"):
        coerce_options(Opts, {"c": "1"}, "toy")


def test_key_value_pairs_split_at_the_first_equals_sign():
    """KEY=VALUE splits once: a value may itself hold '=' (a path, an expression); spaces around are dropped."""
    assert parse_kv(["path=a=b", " head_dim = 16 "], "--mixer-opt") == {"path": "a=b", "head_dim": "16"}
    assert parse_kv(None, "--mixer-opt") == {}
    with pytest.raises(ValueError, match="--task-opt takes KEY=VALUE, got 'seq_len'"):
        parse_kv(["seq_len"], "--task-opt")


def test_a_union_with_str_keeps_the_text_and_one_without_refuses_it():
    """`int | str` (a number or a name) cannot guess which is meant: the text stays text. `int | float`
    has no single type to parse with: refused, as a tuple is."""

    @dataclasses.dataclass
    class Mixed:
        size: int | str = 1
        step: int | float = 1

    assert coerce_options(Mixed, {"size": "16"}, "toy").size == "16"
    with pytest.raises(ValueError, match=r"option step='2': an option of type .* cannot be given as text"):
        coerce_options(Mixed, {"step": "2"}, "toy")


def test_a_scoped_option_is_validated_when_parsed_not_when_its_cell_runs():
    """A bad value fails while the grid is being planned, naming the option, before any cell trains."""
    import mixers
    from core.registry import scoped_opts

    with pytest.raises(ValueError, match=r"option head_dim='sixteen' is not a valid int"):
        scoped_opts(["attention.head_dim=sixteen"], "--mixer-opt", ["attention"], mixers.REGISTRY)
    with pytest.raises(ValueError, match=r"option head_dim='sixteen' is not a valid int"):
        scoped_opts(["head_dim=sixteen"], "--mixer-opt", ["attention", "mamba"], mixers.REGISTRY)
