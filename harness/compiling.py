"""How the trainer compiles a model with torch.compile, and how it hears that compilation happened.

- **Modes** (`COMPILE_MODES`): passed to `torch.compile`. The two CUDA-graph modes record one graph per
  batch shape and replay it (one launch per step instead of hundreds: a small model's step is
  launch-bound on a GPU), so they want few shapes: their cells round batch lengths up
  (harness/cell.py, PAD_TO_GRAPHS). Off CUDA, inductor skips the graphs and they compile like "default".
- **Scopes** (`COMPILE_SCOPES`): what is compiled. `blocks` (the default) compiles each transformer
  block, `model` the whole LM. The N blocks of an LM run the same code on parameters of the same
  shapes, so dynamo traces one block once and every block reuses that graph: compilation is about a
  block's cost instead of N blocks' (on CPU, the first two steps of the small preset: attention 66.2 →
  30.9 s, wave_interference 42.9 → 13.6 s, Mamba 31.7 → 21.0 s; docs/cpu-evidence.md, "Compile scope"). It gives up
  fusion across a block boundary (one more read and write of the (B, T, D) stream per block). The
  final norm is compiled on its own; the embedding (one gather) and the loss (as before) stay eager.
- **Watching** (`CompileWatch`, `frames_compiled`): a step in which torch.compile compiled is warm-up,
  off the budget (harness/train.py). The watch also has dynamo's recompile-limit warnings recorded (8
  variants of a function): from then on that function runs eagerly, with one log line as the only sign,
  so a row would say `compile: true` of a cell that trained partly eager (`recompile_limit_hits`, the
  row's `train.recompile_limit_hits`).
"""
from __future__ import annotations

import copy
import logging
import re
from typing import Callable

import torch
from torch import nn

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")
COMPILE_SCOPES = ("blocks", "model")
# the oldest torch whose torch.compile trains these models; older ones run eagerly only (`check_torch`)
MIN_TORCH_TO_COMPILE = (2, 5)


def major_minor(version: str) -> tuple[int, int]:
    """(2, 15) of "2.15.0+cu130" (or of Triton's "3.2.0"): release numbers compared as numbers, not text."""
    major, minor = re.match(r"(\d+)\.(\d+)", version).groups()
    return int(major), int(minor)


def check_torch(version: str | None = None) -> None:
    """Refuse, in one line, to compile under a torch too old to compile these models right. Under torch
    2.4 (the full suite run against 2.4.1, 2026-11-30): its inductor fails to generate code for the
    RoPE angles with the sympy that pip installs beside it (>= 1.13: `Invalid NaN comparison`; torch
    2.5 pins sympy 1.13.1), so every cell would train eagerly with only a `compile_error` in its row;
    and the blocks scope compiles each block anew (dynamo inlines a module's parameters as guards
    before 2.5), so past 8 blocks the rest would run eagerly. Eager training works there."""
    version = version or torch.__version__
    if major_minor(version) < MIN_TORCH_TO_COMPILE:
        need = ".".join(map(str, MIN_TORCH_TO_COMPILE))
        raise ValueError(f"torch.compile needs torch >= {need} here (this is {version}); upgrade torch, or pass "
                         "--no-compile to train eagerly")


def compile_for_training(module: nn.Module, mode: str = "default", scope: str = "blocks",
                         **compile_kw) -> tuple[nn.Module, str]:
    """What a training step calls instead of `module`, and the scope it got.

    `blocks`: a shallow view of `module` whose `blocks` are compiled wrappers of the same blocks. The
    view shares every parameter, buffer and submodule with `module`, so the optimizer, the dev checks
    and decoding keep using `module` itself, eagerly: nothing outside the training step compiles.
    A module without its own `blocks` list (a DistributedDataParallel wrapper, whose forward must stay
    the wrapper's so gradients all-reduce) gets the whole-model scope, and the scope returned says so."""
    check_torch()  # every compiling path (the trainer, the benchmarks), not only run_matrix's plan
    nest_graph_breaks()
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {mode!r}; choose from {', '.join(COMPILE_MODES)}")
    if scope not in COMPILE_SCOPES:
        raise ValueError(f"unknown compile scope {scope!r}; choose from {', '.join(COMPILE_SCOPES)}")
    kw = {**({"mode": mode} if mode != "default" else {}), **compile_kw}
    blocks = module._modules.get("blocks")  # not getattr: a DDP wrapper forwards attribute reads
    if scope == "blocks" and isinstance(blocks, nn.ModuleList) and len(blocks):
        view = copy.copy(module)  # shares _parameters, _buffers and the other submodules
        view._modules = {**module._modules, "blocks": nn.ModuleList([torch.compile(b, **kw) for b in blocks])}
        # the final norm as a graph of its own too: eager, its fp32 statistics and casts are ~60 more
        # operator calls per step than the whole-model graph makes (the embedding is one gather: eager)
        if module._modules.get("norm") is not None:
            view._modules["norm"] = torch.compile(module._modules["norm"], **kw)
        return view, "blocks"
    return torch.compile(module, **kw), "model"


def nest_graph_breaks() -> bool | None:
    """Have dynamo resume a graph break where it happened, in the nested call, instead of splitting every
    frame between the compiled block and that call; where this torch has the switch (returns whether it
    is on, None where it has none). Why: the mixers' PyTorch scans (the CPU defaults; the Triton scans too
    with WAVEBENCH_SCAN_OPS=0, mixers/_ops.py) run eagerly inside a compiled block (a graph break:
    `torch.compiler.disable`), three calls deep in Mamba (block, mixer, direction). Split at every
    frame, a Mamba block became 5 compiled graphs each way, each a Python entry with its own guards and
    wrapper, and gated_context's 4; resumed in place, 2 (on CPU, torch 2.13, the tiny preset's profiled
    step: 22 and 18 graph calls become 10 and 10, attention's 6 unchanged; `graph_calls` in
    harness/step_profile.py). The values and the compile count do not change (tests/test_compile.py).
    The switch is new in torch (marked experimental): WAVEBENCH_NESTED_GRAPH_BREAKS=0 leaves it off, and the
    row's `train.nested_graph_breaks` says which way a cell compiled."""
    import os

    import torch._dynamo.config as dynamo_config

    if not hasattr(dynamo_config, "nested_graph_breaks"):
        return None
    dynamo_config.nested_graph_breaks = os.environ.get("WAVEBENCH_NESTED_GRAPH_BREAKS", "1") != "0"
    return dynamo_config.nested_graph_breaks


def graph_breaks_nested() -> bool | None:
    """Whether dynamo resumes graph breaks in the nested call (`nest_graph_breaks`); None: no such switch."""
    import torch._dynamo.config as dynamo_config

    return getattr(dynamo_config, "nested_graph_breaks", None)


def frames_compiled() -> int:
    """Frames torch.compile has compiled (or tried to) in this process so far."""
    from torch._dynamo.utils import counters

    return int(counters["frames"]["total"])


class CompileWatch:
    """Calls `on_start()` whenever torch.compile starts work that stops the host: tracing a frame, a
    deferred backward compile, or recording a CUDA graph (the reduce-overhead modes record one per new
    batch shape, and recording is not a dynamo frame, so the frame counter misses it). Through
    dynamo's compile-start callbacks; where a torch lacks them, `frames_compiled()` still sees frames.
    `torch._dynamo.reset()` clears the callbacks (a grid resets before each compiled cell), so the
    watch registers when its run starts and removes itself when the run ends."""

    def __init__(self, on_start: Callable[[], None]):
        self.on_start = on_start
        # (older torch passes no arguments). The callback closes over `on_start`, not over the watch: a
        # watch reachable from its own callback is a reference cycle, freed (with the trainer's run that
        # `on_start` belongs to, its model and optimizer) only when the cycle collector happens to run
        self._callback = lambda *_args: on_start()
        try:
            from torch._dynamo import callback_handler
        except ImportError:  # an old torch: the frame counter alone
            callback_handler = None
        self._handler = callback_handler

    def __enter__(self) -> "CompileWatch":
        if self._handler is not None:
            self._handler.register_start_callback(self._callback)
        _listen_for_recompile_limits()
        return self

    def __exit__(self, *exc) -> None:
        if self._handler is not None and self._callback in self._handler.start_callbacks:
            self._handler.remove_start_callback(self._callback)


LIMIT_LOGGER = "torch._dynamo.convert_frame"  # where dynamo warns "torch._dynamo hit config.recompile_limit (8)"
_LIMIT_HITS: list[str] = []  # this process's, since clear_recompile_limit_hits()


def recompile_limit_hits() -> list[str]:
    """Functions dynamo left eager at a recompile limit since the last clear, as 'recompile_limit (8):
    forward (file:line)'. Per process, not per training run: dynamo warns once per function, and the
    learning-rate sweep's short runs share the cell's dynamo caches, so a limit one of them hits leaves
    the full run eager with no warning of its own."""
    return list(_LIMIT_HITS)


def clear_recompile_limit_hits() -> None:
    """At a cell's start: its row lists the hits of its own runs only."""
    _LIMIT_HITS.clear()


class _LimitHits(logging.Handler):
    """Records dynamo's warning that a function hit a recompile limit. The warning is the only sign: the
    function then runs eagerly (torch 2.11 and 2.13 alike). Holds nothing but the module's list."""

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.startswith("torch._dynamo hit config."):
            lines = msg.splitlines()
            fn = next((ln.split("function:", 1)[1].strip() for ln in lines if "function:" in ln), "?")
            hit = f"{lines[0].removeprefix('torch._dynamo hit config.')}: {fn}"
            if hit not in _LIMIT_HITS:
                _LIMIT_HITS.append(hit)


_LIMIT_HANDLER = _LimitHits(logging.WARNING)


def _listen_for_recompile_limits() -> None:
    """Attach the recorder to dynamo's logger, once per process (it stays: it holds no model)."""
    logger = logging.getLogger(LIMIT_LOGGER)
    if _LIMIT_HANDLER not in logger.handlers:
        logger.addHandler(_LIMIT_HANDLER)
