"""The mixers' Triton scans as PyTorch custom operators (`torch.library.custom_op`).

Why: a Triton kernel is opaque to torch.compile's tracing, so the scans used to run eagerly inside a
compiled block (`torch.compiler.disable`, a graph break): each Mamba block became two compiled graphs
(before and after the scan) with the scan's casts, allocations and launches between them issued one by
one from Python, and CUDA graphs could capture the pieces but never the block. As custom operators
with a shape function (`register_fake`) and a backward (`register_autograd`), the scans are single
nodes of the traced graph: dynamo and AOTAutograd trace through them, inductor calls them in place, and
a block is one forward graph and one backward graph, like attention's.

The shape functions must not specialise on the batch length T, or a compiled model would recompile
for every new length inside the budgeted clock (tests/test_compile.py): sizes are computed with
SymInt-safe arithmetic only: `cdiv` (+ and //), no Python `if` on a size, and no min / max either
(`torch.sym_min` would not guard while tracing, but inductor's on-disk graph cache re-checks a loaded
graph's size guards with Python's min / max on the traced sizes, which does: `fill_chunk_len`).

Inductor's on-disk FX graph cache does not key on an operator's shape function: after the saved states'
shape changed here, a graph cached before failed its own `assert_size_stride` on the new outputs. So an
operator whose outputs change shape must change its name too (the name is in the cached code).

`WAVEBENCH_SCAN_OPS=0` (read at import) restores the graph-break path, for a torch whose custom
operators misbehave; the rows record which ran (`train.scan_ops`).
"""
from __future__ import annotations

import functools
import os
from typing import Callable

import torch

NAMESPACE = "wavebench"
# whether the Triton scans run as custom operators inside compiled graphs (else: eagerly, a graph break)
ENABLED = os.environ.get("WAVEBENCH_SCAN_OPS", "1") != "0"


def cdiv(a, b):
    """ceil(a / b) for ints and SymInts alike (no branch, so no guard on a traced size)."""
    return (a + b - 1) // b


def graph_break_when_disabled(fn: Callable) -> Callable:
    """`fn` traced as it is (its custom operators single nodes of the graph), or with WAVEBENCH_SCAN_OPS=0
    (`ENABLED` read at each call) run eagerly inside a compiled model (`torch.compiler.disable`: a graph
    break), as the scans ran before they were operators."""
    eager = torch.compiler.disable(fn)

    @functools.wraps(fn)
    def call(*args, **kwargs):
        return fn(*args, **kwargs) if ENABLED else eager(*args, **kwargs)

    return call


def define(name: str, schema_fn: Callable, fake: Callable, backward: Callable | None = None,
           setup_context: Callable | None = None):
    """`torch.ops.wavebench.<name>`, defined from `schema_fn` (its type hints give the schema) on first
    call. A module imported a second time (a test that re-imports `mixers`, a notebook cell run twice)
    finds the operator already defined and reuses it: torch (2.11, 2.13) accepts a second definition of
    a name but replaces the first, and with it the backward registered on it, so a backward through the
    operator would then fail (tests/test_scan_triton.py)."""
    existing = getattr(getattr(torch.ops, NAMESPACE), name, None)
    if existing is not None:
        return existing
    op = torch.library.custom_op(f"{NAMESPACE}::{name}", schema_fn, mutates_args=())
    op.register_fake(fake)
    if backward is not None:
        op.register_autograd(backward, setup_context=setup_context)
    return getattr(getattr(torch.ops, NAMESPACE), name)

