"""The one rule of direction between the packages, and no import circles.

    core  <-  mixers, tasks  <-  harness  <-  run_matrix.py  <-  benchmarks
    core  <-  reports                     <-  run_matrix.py  <-  benchmarks

Each package may import only the packages listed for it in `ALLOWED` (and anything outside this
repository). Every `import` counts, also one inside a function: a lazy import is still an arrow
(that is how the old circles hid). The checker reads the source with `ast`, so it sees an arrow
whether or not the code path runs in a test. The planted-fixture tests show that it fails on each
arrow issue 18 found in the old tree, so a pass on the real tree means something.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

ALLOWED: dict[str, set[str]] = {
    "core": set(),  # the neutral layer: stdlib, numpy, torch only
    "mixers": {"core"},  # token mixers know nothing of the trainer or the tasks
    "tasks": {"core"},  # tasks know nothing of mixers or the trainer
    "harness": {"core", "mixers", "tasks"},  # the trainer never imports reports or benchmarks
    "reports": {"core"},  # reports read rows through the schema only
    # a benchmark may drive the grid CLI in-process (benchmarks.span_answers scores each trained cell several
    # ways); run_matrix never imports a benchmark, so the arrow runs one way
    "benchmarks": {"core", "mixers", "tasks", "harness", "reports", "run_matrix"},
}
TOP_SCRIPTS = ("run_matrix",)  # the CLI sits on top: it may import every package


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the layered packages and the top scripts."""
    out = {}
    for pkg in ALLOWED:
        for f in sorted((root / pkg).rglob("*.py")) if (root / pkg).is_dir() else []:
            parts = f.relative_to(root).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    for name in TOP_SCRIPTS:
        if (root / f"{name}.py").is_file():
            out[name] = root / f"{name}.py"
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported module, line) for every import statement in the file, at any depth. `from P import X`
    counts as importing P.X when that is a module of ours, else P; relative imports are resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append((sub if sub in known else base, node.lineno))
    return sorted(set(out), key=lambda t: (t[1], t[0]))


def _ours(target: str) -> str | None:
    top = target.split(".")[0]
    return top if top in ALLOWED or top in TOP_SCRIPTS else None


def violations(root: Path) -> list[str]:
    """One line per import that breaks the rule of direction: 'file:line: a imports b (a may import ...)'."""
    known = modules(root)
    bad = []
    for name, path in known.items():
        src = name.split(".")[0]
        if src in TOP_SCRIPTS:
            continue
        for target, line in imports(name, path, known):
            dst = _ours(target)
            if dst is None or dst == src or dst in ALLOWED[src]:
                continue
            may = ", ".join(sorted(ALLOWED[src])) or "nothing of ours"
            bad.append(f"{path.relative_to(root)}:{line}: {src} imports {target} ({src} may import {may})")
    return bad


def cycles(root: Path) -> list[list[str]]:
    """Import circles between modules of ours (strongly connected components of more than one module,
    or a module importing itself), lazy imports included."""
    known = modules(root)
    graph = {n: sorted({t for t, _ in imports(n, p, known) if t in known}) for n, p in known.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm; the graph has ~100 nodes, recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph[v]:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


# --------------------------------------------------------------------------- the real tree

def test_every_import_follows_the_rule_of_direction():
    bad = violations(ROOT)
    assert not bad, "imports against the rule of direction (tests/test_layers.py):\n" + "\n".join(bad)


def test_no_import_circles():
    found = cycles(ROOT)
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_checker_sees_the_real_tree():
    """Guards against a checker that passes because it reads nothing: it finds every package's modules
    and the arrows that are allowed (harness -> mixers, tasks -> core, ...)."""
    known = modules(ROOT)
    assert {"core.registry", "mixers.attention", "tasks.jsquad", "harness.train", "reports.tables",
            "benchmarks.scaling", "run_matrix"} <= set(known)
    arrows = {(n.split(".")[0], _ours(t)) for n, p in known.items() for t, _ in imports(n, p, known) if _ours(t)}
    assert {("harness", "mixers"), ("harness", "core"), ("tasks", "core"), ("mixers", "core"),
            ("reports", "core"), ("run_matrix", "harness")} <= arrows


# --------------------------------------------------------------------------- planted fixtures

CLEAN = {
    "core/__init__.py": "",
    "core/registry.py": "import importlib\n",
    "mixers/__init__.py": "from core.registry import Registry\n",
    "mixers/attention.py": "from mixers import Mixer\n",
    "tasks/__init__.py": "from core.registry import Registry\n",
    "tasks/jsquad.py": "from tasks import Task\nfrom tasks import jsquad_baselines\n",
    "tasks/jsquad_baselines.py": "from tasks.jsquad_files import QAItem\n",
    "tasks/jsquad_files.py": "from tasks import DataError\n",
    "harness/__init__.py": "",
    "harness/cell.py": "import mixers\nimport tasks\nfrom harness import distributed\nfrom harness.train import train\n",
    "harness/distributed.py": "from harness.evaluate import nll_sums\n",
    "harness/train.py": "from harness.distributed import DataParallel\nfrom harness.evaluate import nll_sums\n",
    "harness/evaluate.py": "import torch\n",
    "reports/__init__.py": "from reports import tables\n",
    "reports/tables.py": "from core.results import read_rows\n",
    "benchmarks/__init__.py": "",
    "benchmarks/common.py": "from harness.model import LM\n\ndef redraw():\n    from reports import write_reports\n",
    "run_matrix.py": "import harness.cell\nimport reports\n",
}


def _tree(tmp_path: Path, plant: dict[str, str]) -> Path:
    files = {**CLEAN}
    for rel, text in plant.items():
        files[rel] = files.get(rel, "") + text
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text, encoding="utf-8")
    return tmp_path


def test_a_clean_planted_tree_passes(tmp_path):
    root = _tree(tmp_path, {})
    assert violations(root) == []
    assert cycles(root) == []


# each arrow issue 18 measured on the old tree, planted into the clean tree
FORBIDDEN = {
    "mixers import the trainer's registry": ("mixers/__init__.py", "from harness.registry import Registry\n",
                                            "mixers imports harness.registry"),
    "a task imports the trainer's data types": ("tasks/jsquad.py", "from harness.data import SeqSet\n",
                                                "tasks imports harness.data"),
    "a task imports the trainer's Preset": ("tasks/mqar.py", "from harness.model import Preset\n",
                                            "tasks imports harness.model"),
    "tasks reach into the objectives, lazily": ("tasks/__init__.py",
                                                "def f():\n    from harness import objectives\n",
                                                "tasks imports harness"),
    "a task imports a mixer": ("tasks/jsquad.py", "import mixers\n", "tasks imports mixers"),
    "a mixer imports a task": ("mixers/attention.py", "from tasks.jsquad import QAItem\n", "mixers imports tasks.jsquad"),
    "reports read rows through the trainer": ("reports/load.py", "from harness.results import read_rows\n",
                                              "reports imports harness.results"),
    "the trainer imports reports, lazily": ("harness/bench_common.py",
                                            "def rebuild():\n    from reports import write_reports\n",
                                            "harness imports reports"),
    "core imports a mixer": ("core/registry.py", "import mixers\n", "core imports mixers"),
}


@pytest.mark.parametrize("name", sorted(FORBIDDEN))
def test_the_checker_fails_on_a_planted_forbidden_import(tmp_path, name):
    rel, text, expected = FORBIDDEN[name]
    bad = violations(_tree(tmp_path, {rel: text}))
    assert any(expected in line and line.startswith(rel) for line in bad), bad


CIRCLES = {
    "cell <-> distributed <-> train (lazy imports)": (
        {"harness/distributed.py": "def spawn():\n    from harness.cell import run_cell\n"
                                   "def dev():\n    from harness.train import nll_sums\n"},
        {"harness.cell", "harness.distributed", "harness.train"}),
    "jsquad <-> jsquad_baselines": ({"tasks/jsquad_baselines.py": "from tasks.jsquad import QAItem\n"},
                                    {"tasks.jsquad", "tasks.jsquad_baselines"}),
    "a package __init__ and its module": ({"mixers/__init__.py": "from mixers.attention import Attention\n"},
                                          {"mixers", "mixers.attention"}),
}


@pytest.mark.parametrize("name", sorted(CIRCLES))
def test_the_checker_fails_on_a_planted_circle(tmp_path, name):
    plant, members = CIRCLES[name]
    found = cycles(_tree(tmp_path, plant))
    assert any(members <= set(c) for c in found), found


def test_relative_imports_are_resolved(tmp_path):
    root = _tree(tmp_path, {"mixers/wave.py": "from ..harness import train\n", "tasks/mqar.py": "from . import jsquad\n"})
    bad = violations(root)
    assert any(line.startswith("mixers/wave.py") and "harness.train" in line for line in bad), bad
    assert not any(line.startswith("tasks/mqar.py") for line in bad)
