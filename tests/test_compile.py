"""torch.compile (on by default on CUDA) must not recompile for every new batch shape.

Token-budget batches change both the number of rows and the length at every step. torch.compile
compiles the model for the first shape, compiles once more when a second shape marks the sizes
dynamic, and should then serve every later shape from that graph. A mixer whose traced code branches
on a Python integer computed from T (a scan's recursion on the parity of T, slices of a sweep) is
instead specialised to each length and recompiled at nearly every step: inside the budgeted clock
(only the first steps are warm-up), until torch gives up and runs it eagerly. On the H200 that is
what a GPU-only path hides; here the same contract is checked on CPU with a counting backend (the
graphs are traced and counted, not compiled by inductor, so it takes seconds).
"""
from __future__ import annotations

import shutil

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounter, CompileCounterWithBackend

import mixers
from harness.compiling import COMPILE_SCOPES, compile_for_training
from harness.model import LM, LMConfig

# (rows, length) of successive batches: rows and length both vary, as token-budget batches do
# (never one row: torch specialises a size of 1 once, a known one-off)
SHAPES = ((4, 57), (3, 64), (2, 91), (5, 122), (6, 33))
V = 97


def _train_on_shapes(mixer: str, causal: bool, scope: str, backend):
    """A small LM compiled as the trainer compiles it (`scope`: each block, or the whole model) with dynamo
    backend `backend`, one training step (forward + backward) per batch of SHAPES: a generator that yields
    after each step."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = LM(LMConfig(vocab_size=V, d_model=32, n_layers=2, mixer=mixer, causal=causal, mlp_hidden=64))
    step, got = compile_for_training(model, scope=scope, backend=backend)
    assert got == scope
    for rows, T in SHAPES:
        ids = torch.randint(0, V, (rows, T))
        lengths = torch.randint(T // 2, T + 1, (rows,))
        lengths[0] = T
        pad_mask = torch.arange(T)[None, :] < lengths[:, None]  # right padding, as the trainer's batches
        step(ids, pad_mask).float().pow(2).mean().backward()
        yield


def _frames_per_step(mixer: str, causal: bool, scope: str = "blocks") -> list[int]:
    """Graphs compiled so far after each training step of `_train_on_shapes`."""
    counter = CompileCounter()
    return [counter.frame_count for _ in _train_on_shapes(mixer, causal, scope, counter)]


@pytest.mark.parametrize("scope", COMPILE_SCOPES)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("mixer", mixers.names())
def test_a_compiled_model_stops_recompiling_after_the_second_batch_shape(mixer, causal, scope):
    frames = _frames_per_step(mixer, causal, scope)
    assert frames[0] >= 1, "nothing was compiled: the test would pass for any model"
    assert frames[-1] == frames[1], (
        f"{mixer} ({'causal' if causal else 'bidirectional'}) recompiled for new batch shapes: graphs after "
        f"each step {frames}; a Python branch or slice on T inside the traced code specialises it to each length "
        "(run the scan eagerly with torch.compiler.disable, or make it shape-agnostic)")


def test_the_check_catches_a_mixer_that_branches_on_the_length(monkeypatch):
    """A planted mixer whose forward branches on the parity of T recompiles, and the check sees it."""
    class Parity(mixers.Mixer):
        def forward(self, x, pad_mask=None):
            return x * 2 if x.shape[1] % 2 else x.cumsum(1)

        def state_floats(self, seq_len: int) -> int:
            return self.d_model

    mixers.REGISTRY.register("parity_probe")(Parity)
    try:
        frames = _frames_per_step("parity_probe", True)
    finally:
        mixers.REGISTRY.unregister("parity_probe")
    assert frames[-1] > frames[1], frames


def _guards_with_min_or_max(mixer: str, scope: str = "blocks") -> list[str]:
    """The size guards holding a min or max of the sizes that a small causal LM's compiled training steps
    (`_train_on_shapes`, traced through AOTAutograd, `aot_eager`, as inductor gets them) leave on its
    graphs' ShapeEnvs."""
    from torch._dynamo.backends.registry import lookup_backend
    from torch._guards import TracingContext
    from torch.utils._sympy.functions import Max, Min

    envs = {}

    def backend(gm, example_inputs):
        env = TracingContext.get().fake_mode.shape_env
        envs[id(env)] = env
        return lookup_backend("aot_eager")(gm, example_inputs)

    for _ in _train_on_shapes(mixer, True, scope, backend):
        pass
    assert envs, "nothing was compiled: the test would pass for any model"
    return sorted({str(g.expr) for env in envs.values() for g in env.guards if g.expr.atoms(Max, Min)})


@pytest.mark.parametrize("scope", COMPILE_SCOPES)
@pytest.mark.parametrize("mixer", mixers.names())
def test_no_guard_holds_a_min_or_max_of_the_sizes(mixer, scope):
    """Inductor's on-disk graph cache (on by default) re-checks a loaded graph's size guards by evaluating
    them as Python code on the traced sizes, where a min or a max is Python's builtin: it compares two
    sizes, and that comparison is a new guard, one the graph compiled from scratch did not have. A guard
    on min(T // 32, ...) came back as T <= 63, and the first longer batch after a cache hit (the GPU
    check's cells load what its warm-up compiled) recompiled the model inside the budgeted clock: the
    Triton scans' chunk length did that (tests/test_scan_triton.py, the one-graph test on a warm cache).
    So no guard may hold a min or max: sizes computed with + and // only."""
    assert not _guards_with_min_or_max(mixer, scope)


def test_the_min_or_max_check_catches_a_chunk_length_with_a_min():
    """A planted mixer that sums over chunks of a length computed as the scans' once was (the fewer of
    T // 32 and 3 chunks, at least one) leaves guards holding Min and Max, and the check sees them."""
    class MinProbe(mixers.Mixer):
        def forward(self, x, pad_mask=None):
            B, T, D = x.shape
            symbolic = isinstance(T, torch.SymInt)
            n = (torch.sym_max if symbolic else max)(1, (torch.sym_min if symbolic else min)(T // 32, 3))
            chunk = (T + n - 1) // n
            sums = torch.nn.functional.pad(x, (0, 0, 0, n * chunk - T)).view(B, n, chunk, D).sum(2)
            return x + sums.mean(1, keepdim=True)

        def state_floats(self, seq_len: int) -> int:
            return self.d_model

    mixers.REGISTRY.register("min_probe")(MinProbe)
    try:
        found = _guards_with_min_or_max("min_probe")
    finally:
        mixers.REGISTRY.unregister("min_probe")
    assert found and all("Max(1, Min(3, " in g for g in found), found


def _mamba_conv():
    from mixers.mamba import causal_depthwise_conv

    w, b = torch.randn(8, 4, requires_grad=True), torch.randn(8, requires_grad=True)
    return lambda x: causal_depthwise_conv(x, w, b)


def _wavelet_filter():
    from mixers.wavelet import causal_filter, wavelet_filters

    lo, _ = wavelet_filters("db2")
    return lambda x: causal_filter(x, lo, 2)


@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")), reason="inductor on CPU needs a C++ compiler")
@pytest.mark.parametrize("make", [_mamba_conv, _wavelet_filter], ids=["mamba_conv", "wavelet_filter"])
def test_the_causal_convolutions_compile_once_for_all_lengths_with_inductor(make):
    """The counting backend cannot see what inductor itself specialises: its CPU convolution backward
    guarded on T, so mamba and wave_wavelet (nn.Conv1d / F.conv1d) recompiled at every new length. Both
    convolutions are now shifted multiply-adds; compiled by inductor, forward + backward, they serve
    every length from the graph compiled at the second shape."""
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("inductor")
    conv = torch.compile(make(), backend=counter)
    frames = []
    for rows, T in SHAPES[:4]:
        x = torch.randn(rows, T, 8, requires_grad=True)
        conv(x).pow(2).sum().backward()
        frames.append(counter.frame_count)
    assert frames[0] == 1 and frames[-1] == frames[1], frames


class _CallCounter:
    """A dynamo backend that runs each graph as traced and counts compilations and graph calls."""

    def __init__(self):
        self.frames, self.calls = 0, 0

    def __call__(self, gm, example_inputs):
        self.frames += 1

        def run(*args):
            self.calls += 1
            return gm.forward(*args)
        return run


def _eager_and_compiled_grads(mixer: str, causal: bool, scope: str, device: str = "cpu",
                              autocast: torch.dtype | None = None) -> tuple[dict, dict]:
    """Every parameter's gradient of one loss, through the model eagerly and through the step the
    trainer compiles (traced through AOTAutograd as its compile is: `aot_eager`, the same graphs
    without inductor's code generation), optionally under autocast as on a GPU."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = LM(LMConfig(vocab_size=V, d_model=32, n_layers=2, mixer=mixer, causal=causal, mlp_hidden=64)).to(device)
    with torch.no_grad():  # gains and gates away from their init (ones, identities): every one matters
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ids = torch.randint(0, V, (3, 40), device=device)
    pad_mask = torch.arange(40, device=device)[None, :] < torch.tensor([40, 31, 22], device=device)[:, None]
    w = torch.randn(3, 40, 32, device=device)

    def grads(fn) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            out = fn(ids, pad_mask)
        (out.float() * w).sum().backward()
        return {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}

    eager = grads(model)
    step, _ = compile_for_training(model, scope=scope, backend="aot_eager")
    return eager, grads(step)


@pytest.mark.parametrize("scope", COMPILE_SCOPES)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("mixer", mixers.names())
def test_compiled_gradients_are_the_eager_gradients(mixer, causal, scope):
    """What the optimizer steps on: every parameter's gradient through the compiled step must be the
    eager model's. Equal outputs and gradients that exist are not enough: under torch 2.11 (the CUDA
    image's) dynamo traced RMSNorm's autograd Function wrongly when its forward returned a no-op
    `.to()`: the norm weights' gradients were all zero and the inputs' wrong, while outputs matched,
    so every compiled model trained with frozen norms.
    The absolute floor scales with the gradient's largest entry (1e-6 of it): compiled and eager sum the
    same fp32 terms in different orders, so an entry near zero in a gradient whose entries reach 75 differs
    by ~1e-5 (seen on an Intel Xeon CPU, not on the AMD EPYC one), while the bug above is off by the
    gradient itself."""
    eager, compiled = _eager_and_compiled_grads(mixer, causal, scope)
    assert compiled.keys() == eager.keys()
    for name, g in eager.items():
        floor = max(1e-5, 1e-6 * g.abs().max().item())
        torch.testing.assert_close(compiled[name], g, rtol=1e-4, atol=floor, msg=f"gradient of {name}")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mixer", mixers.names())
def test_compiled_gradients_are_the_eager_gradients_on_cuda_under_bf16_autocast(mixer):
    """The same on the GPU's torch, with CUDA tensors under bf16 autocast, as the grid trains there.
    bf16 rounds differently in and out of a graph, so the test asks for the same direction and size
    (cosine > 0.99, norms within 5%), which a zeroed or wrong gradient fails."""
    eager, compiled = _eager_and_compiled_grads(mixer, True, "blocks", "cuda", torch.bfloat16)
    assert compiled.keys() == eager.keys()
    assert_bf16_gradients_agree((name, compiled[name], g) for name, g in eager.items())


def assert_bf16_gradients_agree(grads) -> None:
    """For each (name, compiled gradient, eager gradient) under bf16 autocast: the same direction and size
    (cosine > 0.99, norms within 5%). bf16 rounds differently in and out of a compiled graph, so equality is
    out of reach, while a zeroed or wrong gradient fails. (Also the interpreter's test of the Triton scans
    under autocast, tests/test_scan_triton.py.)"""
    for name, c, g in grads:
        cos = torch.nn.functional.cosine_similarity(c.flatten(), g.flatten(), dim=0).item()
        ratio = (c.norm() / g.norm().clamp_min(1e-12)).item()
        assert cos > 0.99 and abs(ratio - 1) < 0.05, f"gradient of {name}: cosine {cos:.4f}, norm ratio {ratio:.4f}"


@pytest.mark.parametrize("mixer", ["attention", "wave_interference"])
def test_the_blocks_scope_traces_one_block_and_every_block_runs_its_graph(mixer):
    """`blocks` (the default) compiles each block: the blocks share their code and shapes, so one
    graph serves all of them, and compilation costs one block's tracing whatever the depth. Every
    block call must run compiled code (a block that fell back to eager, e.g. at dynamo's recompile
    limit, would not call a graph), and the numbers must be the eager model's."""
    frames, calls = {}, {}
    for layers in (1, 4):
        torch._dynamo.reset()
        torch.manual_seed(0)
        model = LM(LMConfig(vocab_size=V, d_model=32, n_layers=layers, mixer=mixer, causal=True, mlp_hidden=64))
        counter = _CallCounter()
        step, scope = compile_for_training(model, backend=counter)
        assert scope == "blocks"
        for rows, T in SHAPES:
            ids = torch.randint(0, V, (rows, T))
            before = counter.calls
            out = step(ids)
            assert counter.calls - before == layers + 1  # each block (and the final norm) through a graph
            torch.testing.assert_close(out, model(ids))  # the model itself, eager: the same numbers
            out.float().pow(2).mean().backward()
        frames[layers], calls[layers] = counter.frames, counter.calls
    assert frames[4] == frames[1] >= 1  # four blocks, one block's compilations


def test_the_blocks_scope_shares_the_model_and_leaves_it_eager():
    """The compiled view shares every parameter with the model (the optimizer steps the model's), and
    the model itself stays uncompiled: dev checks and decoding call it, and compile nothing."""
    torch._dynamo.reset()
    model = LM(LMConfig(vocab_size=V, d_model=32, n_layers=2, mixer="attention", causal=True, mlp_hidden=64))
    keys = list(model.state_dict())
    counter = _CallCounter()
    step, _ = compile_for_training(model, backend=counter)
    assert [id(p) for p in step.parameters()] == [id(p) for p in model.parameters()]
    assert list(model.state_dict()) == keys and all(type(b).__name__ == "Block" for b in model.blocks)
    assert type(model.norm).__name__ == "RMSNorm" and step.norm is not model.norm  # compiled in the view only
    model(torch.randint(0, V, (2, 9)))
    assert counter.frames == 0
    step(torch.randint(0, V, (2, 9))).sum().backward()
    assert counter.frames >= 1 and all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_a_wrapper_without_its_own_blocks_compiles_whole_and_bad_names_are_refused():
    """A DistributedDataParallel wrapper forwards attribute reads to its module, but its own forward must
    run (gradients all-reduce through it): it is compiled whole, and the returned scope says so."""
    class Wrapper(torch.nn.Module):  # like harness.distributed._DDP: attribute reads reach the module
        def __init__(self, module):
            super().__init__()
            self.module = module

        def __getattr__(self, name):
            try:
                return super().__getattr__(name)
            except AttributeError:
                return getattr(self.module, name)

        def forward(self, *a, **k):
            return self.module(*a, **k)

    model = LM(LMConfig(vocab_size=V, d_model=32, n_layers=2, mixer="attention", causal=True, mlp_hidden=64))
    assert hasattr(Wrapper(model), "blocks")
    step, scope = compile_for_training(Wrapper(model), backend=_CallCounter())
    assert scope == "model" and isinstance(step, torch._dynamo.eval_frame.OptimizedModule)
    with pytest.raises(ValueError, match="unknown compile scope 'layers'"):
        compile_for_training(model, scope="layers")
    with pytest.raises(ValueError, match="unknown compile mode 'fast'"):
        compile_for_training(model, mode="fast")


def test_the_cuda_graph_modes_are_those_torch_records_graphs_in():
    """CUDAGRAPH_MODES decides which cells pad their batches to a few shapes and mark a graph step per step
    (harness/cell.py, harness/train.py): it must be the modes whose inductor options turn CUDA graphs on.
    max-autotune records graphs as reduce-overhead does (left out, its cells would record a graph for
    nearly every batch shape); its no-cudagraphs variant does not."""
    from torch._inductor import list_mode_options

    from harness.compiling import COMPILE_MODES, CUDAGRAPH_MODES
    from harness.train import TrainConfig

    for mode in COMPILE_MODES:
        graphs = bool(list_mode_options(mode).get("triton.cudagraphs", False))
        assert (mode in CUDAGRAPH_MODES) is graphs, mode
        assert TrainConfig(compile=True, compile_mode=mode).cuda_graphs is graphs, mode
    assert set(CUDAGRAPH_MODES) == {"reduce-overhead", "max-autotune"}  # (torch 2.5 - 2.13)


def test_a_model_with_no_blocks_is_compiled_whole():
    """The blocks scope compiles each block; a module whose `blocks` list is empty has none to compile,
    and a view compiling nothing but its final norm would leave the model's own layers eager under a
    row that says it was compiled. It is compiled whole, and the scope returned says so."""
    class NoBlocks(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList()
            self.proj = torch.nn.Linear(4, 4)
            self.norm = torch.nn.LayerNorm(4)

        def forward(self, x):
            for b in self.blocks:
                x = b(x)
            return self.norm(self.proj(x))

    torch._dynamo.reset()
    counter = _CallCounter()
    step, scope = compile_for_training(NoBlocks(), backend=counter)
    assert scope == "model" and isinstance(step, torch._dynamo.eval_frame.OptimizedModule)
    step(torch.randn(2, 4))
    assert counter.frames == 1 and counter.calls == 1  # the projection too ran in the graph


def test_frames_compiled_counts_a_frame_whose_compilation_failed():
    """frames_compiled() tells the trainer that a step compiled (off the clock, counted): a frame whose
    compilation failed (dynamo then runs it eagerly) stopped the host all the same, and counts."""
    from harness.compiling import frames_compiled

    def failing_backend(gm, example_inputs):
        raise RuntimeError("planted backend failure")

    torch._dynamo.reset()
    before = frames_compiled()
    with torch._dynamo.config.patch(suppress_errors=True):
        out = torch.compile(lambda x: x * 2 + 1, backend=failing_backend)(torch.ones(3))
    assert torch.equal(out, torch.full((3,), 3.0))  # ran eagerly
    assert frames_compiled() == before + 1
    torch._dynamo.reset()


def test_nested_graph_breaks_are_switched_where_torch_has_the_switch_and_none_where_not(monkeypatch):
    """`nest_graph_breaks` turns the switch on, or off with WAVEBENCH_NESTED_GRAPH_BREAKS=0; a torch without
    it (older than the switch) compiles as it did, and the row's `train.nested_graph_breaks` says None."""
    import types

    import torch._dynamo.config as dynamo_config

    from harness.compiling import graph_breaks_nested, nest_graph_breaks

    if hasattr(dynamo_config, "nested_graph_breaks"):
        monkeypatch.setattr(dynamo_config, "nested_graph_breaks", False)  # (restored after the test)
        assert nest_graph_breaks() is True and graph_breaks_nested() is True
        monkeypatch.setenv("WAVEBENCH_NESTED_GRAPH_BREAKS", "0")
        assert nest_graph_breaks() is False and graph_breaks_nested() is False
    older = types.SimpleNamespace()  # a dynamo config with no such switch
    monkeypatch.setattr(torch._dynamo, "config", older)
    monkeypatch.delenv("WAVEBENCH_NESTED_GRAPH_BREAKS", raising=False)
    assert nest_graph_breaks() is None and graph_breaks_nested() is None
    assert not hasattr(older, "nested_graph_breaks")  # nothing set on a torch that would not read it


def test_a_recompile_limit_warning_is_recorded_once_by_limit_and_function():
    """The row lists each function dynamo left eager once, as 'limit (n): function' (dynamo warns once per
    function, but a learning-rate sweep's runs share a process and may each see it), and nothing of the
    logger's other warnings; the list handed out is a copy, which the next cell's clear leaves alone."""
    import logging

    import harness.compiling as hc

    hc.clear_recompile_limit_hits()
    with hc.CompileWatch(lambda: None):  # (the watch attaches the recorder to dynamo's logger)
        pass
    logger = logging.getLogger(hc.LIMIT_LOGGER)
    try:
        for name in ("'forward' (mixers/attention.py:80)", "'forward' (mixers/attention.py:80)", "'scan' (x.py:3)"):
            logger.warning("torch._dynamo hit config.%s (%s)\n   function: %s\n   last reason: %s",
                           "recompile_limit", 8, name, "0/7: tensor 'x' size mismatch")
        logger.warning("torch._dynamo: some other warning")
        hits = hc.recompile_limit_hits()
        assert hits == ["recompile_limit (8): 'forward' (mixers/attention.py:80)",
                        "recompile_limit (8): 'scan' (x.py:3)"]
    finally:
        hc.clear_recompile_limit_hits()
    assert len(hits) == 2 and hc.recompile_limit_hits() == []
