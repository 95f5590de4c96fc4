"""The README stays true to the code: every command it shows parses, with every flag it shows, and names
mixers, objectives, tasks, presets, options and GPU-check parts that exist; every file and test it cites
exists.

Why: a researcher copies the README's commands rather than reading the code, and the README has some
sixty of them, most of which no test runs (they train for minutes or need a GPU). A renamed flag or part
would leave them failing at a user's first try. It happened once: session 28 moved a class, and
`python -m benchmarks.scan_memory` failed with ImportError until a review found it. Here each command's
module is imported and its `main` runs up to the end of argument parsing (argparse is stopped there),
then the names it would look up are looked up.
"""
from __future__ import annotations

import argparse
import functools
import importlib
import itertools
import re
import shlex
from pathlib import Path

import pytest

import harness.objectives as objectives
import mixers
import tasks
from benchmarks import gpu_check
from core.presets import PRESETS
from core.registry import UnknownNameError, parse_kv, scoped_opts

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# the README and the documents it links (docs/testing.md: the audits' record), checked alike
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]

# the entry points a command may name, and the module whose `main(argv)` parses its arguments
_START = re.compile(r"(python -m [\w.]+|python run_matrix\.py|python scripts/mutation_audit\.py"
                    r"|bash scripts/(?:device_)?gpu_check\.sh|bash scripts/with_wheels\.sh python3 run_matrix\.py)"
                    r"(?=\s|$)(.*)")
_MODULE = {"python run_matrix.py": "run_matrix", "python -m reports": "reports.__main__",
           "python scripts/mutation_audit.py": "scripts.mutation_audit",
           "bash scripts/gpu_check.sh": "benchmarks.gpu_check",
           "bash scripts/device_gpu_check.sh": "benchmarks.gpu_check"}
# paths the README names that a run creates (outputs, the example mixer file), or prefixes of a family
_NOT_IN_TREE = ("gpu_check/", "mixers/my_mixer.py", "reports/jsquad-offline_tiny_tokens-20000",
                "results/jsquad-offline_tiny_tokens-20000", "results/bench_")


def readme_commands(text: str) -> list[str]:
    """Every command the README shows, in fenced blocks (continuations joined, shell variables assigned in
    a block substituted) and in inline code spans (which may wrap lines), its trailing comment cut."""
    text = text.replace("\\\n", " ")
    lines: list[str] = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        assigned = dict(re.findall(r'^([A-Z]\w*)="([^"]*)"\s*$', block, re.M))
        for line in block.splitlines():
            for name, value in assigned.items():
                line = line.replace(f"${name}", value)
            lines.append(line)
    prose = re.sub(r"```[a-z]*\n.*?```", "", text, flags=re.S)
    lines += [span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", prose)]
    # a --mixer-opt / --task-opt / --objective-opt in prose is run_matrix's: its option must exist
    lines += [f"python run_matrix.py {span}" for span in lines
              if re.fullmatch(r"--(mixer|task|objective)-opt \S+", span)]
    found = []
    for line in lines:
        m = _START.search(line.split(" #")[0])
        if m:  # a command ends at the next one (`; tar ...`)
            found.append(" ".join((m.group(1) + m.group(2).split("; ")[0]).split()))
    return sorted(set(found))


def variants(command: str) -> list[list[str]] | None:
    """The argv lists a command stands for: `...` (the flags shown before) dropped, `[--flag X]` (optional)
    kept as `--flag X`, and `a|b` (a choice) expanded into one argv each. None for a template (`KEY=VALUE`,
    `eval_limit=N`): nothing to parse."""
    if re.search(r"=[A-Z]+\b", command):
        return None
    words = [w for w in shlex.split(command.replace("[", " ").replace("]", " ")) if w != "..."]
    return [list(w) for w in itertools.product(*[word.split("|") for word in words])]


class _Parsed(Exception):
    def __init__(self, namespace: argparse.Namespace):
        self.namespace = namespace


def parsed(argv: list[str], monkeypatch) -> tuple[str, argparse.Namespace]:
    """(module, namespace) of one command's argv, by running its module's `main` up to its argparse. A command
    with no arguments may be prose naming a tool whose real use needs some (`--data-dir`): its module's
    `--help` must work (an empty namespace then). A command run with the carried wheels
    (`bash scripts/with_wheels.sh python3 ...`) is its python command's."""
    if argv[:3] == ["bash", "scripts/with_wheels.sh", "python3"]:
        argv = ["python", *argv[3:]]
    head = " ".join(argv[:3] if argv[:2] == ["python", "-m"] else argv[:2])
    module = _MODULE.get(head, head.removeprefix("python -m "))
    rest = argv[3:] if argv[:2] == ["python", "-m"] else argv[2:]
    original = argparse.ArgumentParser.parse_args

    def stop(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop)
    try:
        importlib.import_module(module).main(rest or ["--help"])
    except _Parsed as p:
        return module, p.namespace
    except SystemExit as e:
        if rest or e.code not in (0, None):
            raise
        return module, argparse.Namespace()
    finally:
        monkeypatch.undo()
    raise AssertionError(f"{module}.main returned without parsing its arguments")


def names_in(value) -> list[str]:
    return [v for v in (value.split(",") if isinstance(value, str) else value or []) if v]


def check_names(module: str, ns: argparse.Namespace) -> None:
    """Look up what the parsed arguments name; raises as the command would, a little later."""
    selected = {}
    for attr, registry in (("mixers", mixers), ("objectives", objectives)):
        chosen = [n for n in names_in(getattr(ns, attr, None)) if n != "all"]
        for n in chosen:
            registry.get(n)
        selected[attr] = chosen or registry.names()
    if getattr(ns, "mixer_opt", None):
        scoped_opts(ns.mixer_opt, "--mixer-opt", selected["mixers"], mixers.REGISTRY)
    if getattr(ns, "objective_opt", None):
        scoped_opts(ns.objective_opt, "--objective-opt", selected["objectives"], objectives.REGISTRY)
    task = getattr(ns, "task", None)
    if isinstance(task, str):
        tasks.REGISTRY.make_options(task, parse_kv(getattr(ns, "task_opt", None), "--task-opt"))
    preset = getattr(ns, "preset", None)
    if isinstance(preset, str) and preset:  # '' (a benchmark's own default) names none
        assert preset in PRESETS, f"no preset {preset!r}"
    if module == "benchmarks.gpu_check":
        unknown = set(names_in(ns.parts)) - set(gpu_check.SPLIT[0] + gpu_check.SPLIT[1])
        assert not unknown, f"no GPU-check part(s) {sorted(unknown)}"


def test_every_command_in_the_readme_parses_and_names_what_exists(monkeypatch, capsys):
    commands = [c for doc in DOCS for c in readme_commands(doc.read_text(encoding="utf-8"))]
    checked, failures = 0, []
    for command in commands:
        if command.startswith(("python -m pip", "python -m pytest")):
            continue  # not ours; the tests they name are checked below
        for argv in variants(command) or []:
            try:
                check_names(*parsed(argv, monkeypatch))
                checked += 1
            except (SystemExit, Exception) as e:  # argparse exits 2 on a bad flag (its message on stderr)
                why = capsys.readouterr().err.strip().splitlines()[-1:] if isinstance(e, SystemExit) else [e]
                failures.append(f"{shlex.join(argv)}\n    -> {type(e).__name__}: {why[0] if why else e}")
    assert not failures, "README commands that fail:\n" + "\n".join(failures)
    # the extraction itself: the first screen's commands and the device procedure's are among those checked
    assert checked >= 40, checked
    for must in ("python run_matrix.py --data-dir ../shared/data/jsquad-v1.3 --quick",
                 "python scripts/mutation_audit.py tasks/jsquad_metric.py tests/test_metric.py --out "
                 "runs/mutation/jsquad_metric.jsonl",  # docs/testing.md's
                 "python run_matrix.py --mixer-opt mamba.use_mamba_ssm=false",
                 "bash scripts/device_gpu_check.sh --parts " + ",".join(gpu_check.SPLIT[1]),
                 "python -m benchmarks.scan_memory --out results/bench_scan_memory_cpu.json"):
        assert must in commands, must
    # the JaQuAD twin on a lent GPU (docs/gpu-check.md), parsed as the run_matrix command it runs
    assert any(c.startswith("bash scripts/with_wheels.sh python3 run_matrix.py") and "extra_train=jaquad" in c
               for c in commands)


def test_the_readmes_two_device_commands_run_every_gpu_check_part_in_order():
    """The device procedure is the README's two `device_gpu_check.sh --parts` commands: a part the plan
    gains but the README does not name would never run on a lent GPU."""
    device = [c for c in readme_commands(README.read_text(encoding="utf-8"))
              if c.startswith("bash scripts/device_gpu_check.sh --parts")]
    assert [names_in(c.split("--parts ", 1)[1].split()[0]) for c in device] == [list(h) for h in gpu_check.SPLIT]


def test_the_gpu_checks_grids_run_the_readmes_main_command_but_for_its_size():
    """Issue 14's first target is "the README's default grid command finishes every cell ok" on a GPU, and
    the check can only afford a short version of it: the same flags, except the ones that set its size
    (data folder, budget, seeds, preset, and the number of dev checks, which grows with the budget; the
    learning-rate sweep, replaced by the preset's rate). A flag the main command gains (as `--pretrain
    passages` was until 2026-12-07) must reach every grid of the check, or that path never runs on a GPU and
    the verdict answers for another command. The check may run more than the command: its grids still
    pretrain on the passages (the GPU path of `--pretrain`; the rows' speeds are their task stage's)."""
    main = next(c for c in readme_commands(README.read_text(encoding="utf-8"))
                if c.startswith("python run_matrix.py") and "--seeds 0,1,2" in c and "--preset small" in c)
    sized = {"--data-dir", "--budget", "--seeds", "--preset", "--dev-checks"}  # (tests/test_gpu_check.py)
    words = main.split()[2:]
    flags = [(w, v) for w, v in zip(words, words[1:] + [""]) if w.startswith("--") and w not in sized]
    assert "--dev-checks" in words and "extra_train=jaquad" not in words  # (the main command this test reads)
    parts = gpu_check.plan(Path("out"), Path("data"), dry=False, budget=None, eval_limit=None)
    for part in parts:
        if not part.name.startswith("grid"):
            continue
        argv = [str(a) for a in part.argv]
        pairs = set(zip(argv, argv[1:] + [""]))
        for flag, value in flags:
            want = (flag, value) if not value.startswith("--") else None
            assert (want in pairs) if want else flag in argv, f"{part.name} lacks {flag} {value}"
        assert "--lr" not in main.split() and ("--lr", "preset") in pairs  # the one documented replacement


def test_ci_runs_the_set_up_and_test_commands_of_the_readmes_first_screen():
    """CI must prove what a researcher runs first: `.ci/run` runs exactly the README's first two commands."""
    first = re.search(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), re.S).group(1)
    shown = [line.split(" #")[0].strip() for line in first.splitlines() if line.strip()]
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
          if line.startswith("python ")]
    assert ci == shown[:2] and shown[1] == "python -m pytest -q", (ci, shown)


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(ROOT)))
def test_every_file_and_test_the_readme_cites_exists(doc):
    text = doc.read_text(encoding="utf-8")
    missing = []
    for m in re.finditer(r"(?<![\w/.])((?:core|mixers|tasks|harness|reports|benchmarks|results|tests|scripts)"
                         r"/[\w./-]*\w)(::\w+)?", text):
        path, test = m.group(1), (m.group(2) or "")[2:]
        if path.startswith(_NOT_IN_TREE):
            continue
        if not (ROOT / path).exists() or (test and f"def {test}(" not in (ROOT / path).read_text(encoding="utf-8")):
            missing.append(m.group(0))
    sources = "".join(p.read_text(encoding="utf-8") for p in (ROOT / "tests").glob("*.py"))
    missing += [n for n in sorted(set(re.findall(r"\b(test_\w+)\b", text)))
                if f"def {n}(" not in sources and not (ROOT / "tests" / f"{n}.py").exists()]
    assert not missing, f"{doc.name} cites what is not in the tree: {missing}"


def anchor(heading: str) -> str:
    """GitHub's id for a heading: lower case, punctuation dropped (letters, digits, `_`, `-` and spaces
    kept), each space a hyphen."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@functools.lru_cache(maxsize=None)  # one parse per document, not one per link to it
def anchors(doc: Path) -> frozenset[str]:
    text = re.sub(r"```.*?```", "", doc.read_text(encoding="utf-8"), flags=re.S)  # a `# comment` is no heading
    return frozenset(anchor(h) for h in re.findall(r"^#+ (.+)$", text, re.M))


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(ROOT)))
def test_every_link_between_the_documents_reaches_a_file_and_a_heading(doc):
    """The README's table of contents and its links to docs/ (and back): a renamed heading or a moved file
    leaves a link that goes nowhere, which no reader reports."""
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, frag = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        if not dest.exists() or (frag and (dest.suffix != ".md" or frag not in anchors(dest))):
            broken.append(target)
    assert not broken, f"{doc.name} links to what is not there: {broken}"
    assert (ROOT / "docs" / "testing.md") in DOCS  # the glob found the documents


def test_a_heading_is_linked_by_githubs_anchor():
    """The check above can fail: GitHub's rule on headings of the README's kind."""
    assert anchor("Mamba, gated_context and flash-attn on CUDA") == "mamba-gated_context-and-flash-attn-on-cuda"
    assert anchor("Where a training step's time goes (CPU evidence)") == "where-a-training-steps-time-goes-cpu-evidence"
    assert anchor("GPU check: one command on a lent or rented GPU") == "gpu-check-one-command-on-a-lent-or-rented-gpu"


@pytest.mark.parametrize("command, error, says, why", [
    ("python -m benchmarks.scaling --lenghts 256", SystemExit, "2", "a misspelt flag"),
    ("python run_matrix.py --mixers attention,mambo", UnknownNameError, "unknown mixer 'mambo'", "an unknown mixer"),
    ("python run_matrix.py --mixer-opt mamba.d_state=sixteen", ValueError,
     "option d_state='sixteen' is not a valid int", "an option value of the wrong type"),
    ("python run_matrix.py --task-opt eval_limt=5", ValueError, "task 'jsquad' has no option 'eval_limt'",
     "an unknown task option"),
    ("bash scripts/device_gpu_check.sh --parts grid,grid_tests", AssertionError, "no GPU-check part(s) ['grid_tests']",
     "an unknown GPU-check part"),
    ("python -m benchmarks.compile_times --scope model|block", SystemExit, "2", "one bad alternative of a choice"),
])
def test_a_command_the_code_would_reject_is_caught(command, error, says, why, monkeypatch):
    """The check can fail: each of these is wrong in one way the README could drift into, and is caught for
    that reason (argparse's exit status 2, or the code's own message), not by the checker tripping itself."""
    with pytest.raises(error, match=f"^{re.escape(says)}"):
        for argv in variants(command):
            check_names(*parsed(argv, monkeypatch))
