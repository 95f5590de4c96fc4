"""Mechanical mutation audit: which one-token bugs in a module do its tests let through?

Earlier audits planted bugs by hand. This one enumerates them: every comparison flipped (`<` to `<=`,
`==` to `!=`, `in` to `not in`), every arithmetic operator swapped (`+` to `-`, `*` to `/`), `and`
to `or`, a `not` dropped, an integer constant moved by one, a boolean constant negated, an
augmented assignment reversed, a short string constant (a separator, a suffix) emptied, a call
statement (`f.flush()`) dropped. It applies them one at a time to the module's file, runs the given
test files (`pytest -x`), and writes one JSON line per mutant: killed (a test failed), survived (all
passed), timeout (past 4x the unmutated time, at least 60 s: a loop that never ends, or a loaded
machine; read apart) or skipped (did not compile). Each test run is held to an address-space limit
(`--max-memory`, 8 GiB by default): a mutant that inflates a size fails its tests with a MemoryError
(killed, marked `memory` in its row) instead of taking the machine's memory.

A survivor is a bug no test sees, or an equivalent mutation (one that changes nothing observable);
a person reads each. Run it in a scratch worktree: the module file is rewritten while it runs (it is
restored afterwards, also on Ctrl-C or `kill`).

    python scripts/mutation_audit.py tasks/jsquad_metric.py tests/test_metric.py \
        --out runs/mutation/jsquad_metric.jsonl
"""
from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repository's packages
from core.processes import kill_group  # noqa: E402

SWAPS: dict[type, type] = {
    ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
    ast.In: ast.NotIn, ast.NotIn: ast.In,
    ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
    ast.FloorDiv: ast.Mult, ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult,
    ast.And: ast.Or, ast.Or: ast.And, ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd,
}


@dataclass
class Site:
    """One place a one-token bug can be planted."""
    index: int
    line: int
    col: int  # where on the line: two sites of one kind on one line differ here
    kind: str  # e.g. "Lt->LtE", "const 3->4", "drop not"


def _skipped_nodes(tree: ast.AST) -> set[int]:
    """ids of nodes never mutated: annotations, docstrings, f-string parts, `if TYPE_CHECKING`."""
    skip: set[int] = set()

    def mark(node: ast.AST | None) -> None:
        if node is not None:
            skip.update(id(n) for n in ast.walk(node))

    for node in ast.walk(tree):
        if isinstance(node, (ast.arg, ast.AnnAssign)):
            mark(node.annotation)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            mark(node.returns)
        elif isinstance(node, ast.JoinedStr):
            mark(node)
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            mark(node)
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                mark(body[0])
    return skip


def _mutations(node: ast.AST) -> list[tuple[str, object]]:
    """(label, how) for each mutation this node admits; `how` is what `_apply` needs."""
    out: list[tuple[str, object]] = []
    if isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            if type(op) in SWAPS:
                out.append((f"{type(op).__name__}->{SWAPS[type(op)].__name__}", ("cmp", i)))
    elif isinstance(node, (ast.BinOp, ast.AugAssign, ast.BoolOp)) and type(node.op) in SWAPS:
        out.append((f"{type(node.op).__name__}->{SWAPS[type(node.op)].__name__}", ("op",)))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        out.append(("drop not", ("not",)))
    elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
        out.append(("drop call", ("call",)))
    elif isinstance(node, ast.Constant):
        if isinstance(node.value, str) and 0 < len(node.value) <= 3:
            out.append((f"str {node.value!r}->''", ("const", "")))
        elif isinstance(node.value, bool):
            out.append((f"{node.value}->{not node.value}", ("const", not node.value)))
        elif isinstance(node.value, int):
            out.append((f"const {node.value}->{node.value + 1}", ("const", node.value + 1)))
    return out


def _walk(tree: ast.AST):
    """(node, label, how) for every mutation of a parsed module, in a fixed order (its AST's walk)."""
    skip = _skipped_nodes(tree)
    for node in ast.walk(tree):
        if id(node) not in skip:
            for label, how in _mutations(node):
                yield node, label, how


def sites(source: str) -> list[Site]:
    """Every mutation site of a module, numbered in walk order."""
    return [Site(i, getattr(node, "lineno", 0), getattr(node, "col_offset", 0), label)
            for i, (node, label, _) in enumerate(_walk(ast.parse(source)))]


def mutate(source: str, index: int) -> str:
    """The module's source with only mutation `index` applied."""
    tree = ast.parse(source)
    for k, (node, _, how) in enumerate(_walk(tree)):
        if k == index:
            _apply(node, how)
            return ast.unparse(tree)
    raise IndexError(f"no mutation site {index}")


def _apply(node: ast.AST, how: tuple) -> None:
    if how[0] == "cmp":
        node.ops[how[1]] = SWAPS[type(node.ops[how[1]])]()
    elif how[0] == "op":
        node.op = SWAPS[type(node.op)]()
    elif how[0] == "not":
        # `not x` -> `x`: keep the node, make its operator a no-op unary plus on a bool
        node.op = ast.UAdd()
        node.operand = ast.Call(ast.Name("bool", ast.Load()), [copy.deepcopy(node.operand)], [])
    elif how[0] == "call":  # the statement `f(x)` becomes the no-op `None`
        node.value = ast.Constant(None)
    elif how[0] == "const":
        node.value = how[1]


# how an allocation past the cap fails: Python's MemoryError (numpy's _ArrayMemoryError), torch's CPU
# allocator, C++. Not a bare substring: a test whose output merely names torch's OutOfMemoryError (a row's
# error text, a GPU stand-in) failed on an assertion, not on memory.
MEMORY_ERRORS = re.compile(r"(?<![A-Za-z])MemoryError|_ArrayMemoryError|can't allocate memory|std::bad_alloc")


def _run_tests(tests: list[str], timeout: float, max_memory_gib: float = 0.0) -> tuple[str, float, bool]:
    """(killed | survived | timeout, seconds, whether the tests ran out of memory) for one pytest run.

    max_memory_gib > 0 caps the run's address space (RLIMIT_AS, inherited by its children): a mutant
    that turns `// 64` into `* 64` in a buffer size gets a MemoryError, not tens of GB of RAM."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    limit = int(max_memory_gib * (1 << 30))

    def cap() -> None:  # runs in the child, before pytest starts
        if limit > 0:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    t0 = time.perf_counter()
    # Its own session, and the whole group killed when the run ends: the Triton tests run their kernels
    # in a pytest subprocess (under the interpreter, up to 15 min); killing pytest alone at a timeout
    # left that one running, on a core the next mutants' timings share.
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=cap,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - t0, False
    finally:
        kill_group(proc)  # pytest and whatever it started
    secs = time.perf_counter() - t0
    if proc.returncode == 0:
        return "survived", secs, False
    text = out.decode("utf-8", "replace")
    return "killed", secs, limit > 0 and MEMORY_ERRORS.search(text) is not None


def _drop_bytecode(path: Path) -> None:
    """A stale .pyc of the same size and second would hide the mutation: remove it."""
    for pyc in (path.parent / "__pycache__").glob(f"{path.stem}.*.pyc"):
        pyc.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("module", type=Path, help="the .py file to mutate (rewritten in place, restored)")
    p.add_argument("tests", nargs="+", help="test files or node ids that should catch its bugs")
    p.add_argument("--out", type=Path, required=True, help="one JSON line per mutant")
    p.add_argument("--only", default="", help="site indexes to run, e.g. 3,7,10-12 (default: all)")
    p.add_argument("--list", action="store_true", help="print the sites and stop")
    p.add_argument("--max-memory", type=float, default=8.0, metavar="GIB",
                   help="address-space limit of each test run in GiB; 0: none (default: 8)")
    args = p.parse_args(argv)

    original = args.module.read_text(encoding="utf-8")
    all_sites = sites(original)
    if args.list:
        lines = original.splitlines()
        for s in all_sites:
            where = f"L{s.line}:{s.col}"
            print(f"{s.index:4d} {where:9s} {s.kind:14s} {lines[s.line - 1].strip()[:90]}")
        return 0
    chosen = all_sites
    if args.only:
        want: set[int] = set()
        for part in args.only.split(","):
            lo, _, hi = part.partition("-")
            want.update(range(int(lo), int(hi or lo) + 1))
        chosen = [s for s in all_sites if s.index in want]

    status, base, oom = _run_tests(args.tests, 3600, args.max_memory)
    if status != "survived":
        why = f"out of memory under --max-memory {args.max_memory:g}" if oom else status
        print(f"the tests fail on the unmutated module ({why}): fix that first", file=sys.stderr)
        return 2
    timeout = max(60.0, 4 * base)  # generous: a loaded machine is not an infinite loop
    print(f"{len(chosen)} mutants of {args.module}; tests take {base:.1f} s unmutated", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    # a background job ignores Ctrl-C; `kill` (SIGTERM) must still restore the module
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        with args.out.open("w", encoding="utf-8") as f:
            for s in chosen:
                mutated = mutate(original, s.index)
                try:
                    compile(mutated, str(args.module), "exec")
                except SyntaxError:
                    result, secs, oom = "skipped", 0.0, False
                else:
                    args.module.write_text(mutated, encoding="utf-8")
                    _drop_bytecode(args.module)
                    result, secs, oom = _run_tests(args.tests, timeout, args.max_memory)
                counts[result] = counts.get(result, 0) + 1
                row = {**asdict(s), "module": str(args.module), "result": result, "seconds": round(secs, 1)}
                if oom:
                    row["memory"] = True
                f.write(json.dumps(row) + "\n")
                f.flush()
                mark = "SURVIVED" if result == "survived" else result + (" (memory)" if oom else "")
                print(f"{s.index:4d} L{s.line}:{s.col:<4d} {s.kind:14s} {mark}", flush=True)
    finally:
        args.module.write_text(original, encoding="utf-8")
        _drop_bytecode(args.module)
    print(" ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
