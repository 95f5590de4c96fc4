"""Stateful decoding (prefill + step) against the full forward, for every registered mixer.

The full forward is the reference: a prompt run by `prefill` and the tokens after it run one at a
time by `step` must give the outputs `forward` gives for the whole (left-padded) sequence, and greedy
decoding with carried state must give the tokens of the prefix-rerun path. Parametrised over the
registry, so a new mixer is covered the moment it registers (through the rerun fallback until it
has a step of its own).
"""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import mixers
from core.data import SpecialTokens
from harness.model import LM, LMConfig
from harness.objectives import build as build_objective
from mixers import Mixer, RerunState

D = 32
LENGTHS = [12, 10, 7]  # real tokens per row; rows are left-padded to 12
T0 = 6  # prompt columns run by prefill; the rest go through step one at a time


def _causal(name: str, **opts) -> Mixer:
    """A causal mixer whose every part shows in its output: the wavelet mixer's gate starts as the
    identity (its bands weighted 0, so a wrong band in `step` would be invisible); here it is random.
    Attention gets 4 heads: at its default head_dim, D = 32 is one head, and a step that mixed up heads
    and features (transposing the wrong axes of its read-out) gave the forward's numbers."""
    if name == "attention":
        opts = {"head_dim": D // 4, **opts}
    m = mixers.build(name, D, causal=True, **opts)
    if name == "wave_wavelet":
        with torch.no_grad():
            m.gate.copy_(torch.randn(m.gate.shape))
    if name == "mamba":  # D (the skip term) starts at ones: a step that divided by it gave the same numbers
        with torch.no_grad():
            m.fwd.D.normal_()
    return m


def _left_padded(seed: int = 0, lengths: list[int] = LENGTHS) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    x = torch.randn(len(lengths), T, D, generator=g)  # pads hold noise: it must not matter
    pad_mask = torch.arange(T)[None] >= torch.tensor([T - n for n in lengths])[:, None]
    return x, pad_mask


def _check_prefill_then_steps(m: Mixer, bf16: bool = False, tol: float = 1e-5, lengths: list[int] = LENGTHS):
    """Prefill T0 columns, step through the rest, compare with the forward; returns the final state.
    Rows of equal `lengths` have no padding and run with no mask at all, as an unpadded batch does.
    Under bf16 autocast the outputs must come in the forward's dtype and differ from it by rounding
    only (`_assert_rounding_apart`); `tol` is the fp32 check's."""
    m.eval()
    x, pad_mask = _left_padded(lengths=lengths)
    mask = None if pad_mask.all() else pad_mask
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = m(x, mask)  # (B, T, D)
        y0, state = m.prefill(x[:, :T0], None if mask is None else mask[:, :T0])
        ys = [y0]
        for t in range(T0, x.shape[1]):
            y_t, state = m.step(x[:, t], state)
            ys.append(y_t[:, None])
    assert {y.dtype for y in ys} == {out.dtype}, "prefill and step must return the forward's dtype"
    got, ref = torch.cat(ys, 1).float()[pad_mask], out.float()[pad_mask]
    if bf16:
        _assert_rounding_apart(got, ref)
    else:
        torch.testing.assert_close(got, ref, rtol=tol, atol=tol)
    return state


def _assert_rounding_apart(got: torch.Tensor, ref: torch.Tensor, max_ulps: int = 2, max_differing: float = 0.1):
    """`got` is `ref` computed in the same (bf16) dtypes, by kernels that may round apart. Attention's
    one-query step is another SDPA kernel than the forward's, and on some CPUs (AVX2 without AVX-512)
    even the forward of the 6-column prompt rounds apart from the forward of all 12 columns: about 2% of
    the elements, one or two bf16 ulps each. A part of the step computed in another dtype instead moves
    most elements (attention's output projection or its SDPA in fp32, even cast back to bf16: 40% to
    100% of the step's elements): so nearly every element must match to the bit, and the others by a
    couple of ulps at the output's scale (a bf16 ulp is 2^-7 of the power of two below a value)."""
    scale = float(ref.abs().max())
    ulp = 2.0 ** (math.floor(math.log2(scale)) - 7) if scale > 0 else 0.0
    diff = (got - ref).abs()
    worst = float(diff.max())
    assert worst <= max_ulps * ulp, f"{worst:.3g} apart: more than {max_ulps} bf16 ulps ({ulp:.3g})"
    differing = float((diff > 0).float().mean())
    assert differing <= max_differing, f"{differing:.0%} of the elements differ from the forward's: not rounding alone"


@pytest.mark.parametrize("name", mixers.names())
def test_prefill_and_steps_equal_the_full_forward_with_left_padding(name):
    torch.manual_seed(0)
    _check_prefill_then_steps(_causal(name))


@pytest.mark.parametrize("name", mixers.names())
def test_decoding_under_bf16_autocast_gives_the_forwards_numbers(name):
    """On CUDA the grid evaluates under bf16 autocast, so decoding must compute what the forward computes in
    the same dtypes, or greedy answers drift from the model that was trained and scored by perplexity. CPU
    autocast stands in for CUDA's. Mamba's step ran its short conv in fp32 (the forward's runs in the input's
    bf16) and its Δ projection in bf16 (the forward's in fp32): 4.8e-3 of the output's scale apart; its conv
    alone in fp32 moves 41% of the elements here. Now every mixer but attention matches the forward to the
    bit; attention rounds apart in about 2% of the elements on an AVX2 CPU, one or two ulps each, as
    `_assert_rounding_apart` allows. A step returning fp32 fails on its dtype."""
    torch.manual_seed(0)
    _check_prefill_then_steps(_causal(name), bf16=True)


@pytest.mark.parametrize("name,opts", [("wave_wavelet", {"wavelet": "db2", "levels": 3}),
                                       ("wave_interference", {"scale": "unit", "readout": "magnitude"}),
                                       ("wave_interference", {"scale": "sum", "rope_phase": False}),
                                       ("wave_modulation", {"scale": "sum", "rope_phase": False, "readout": "real"}),
                                       ("mamba", {"d_conv": 2, "scan": "reference"})])
def test_step_equals_forward_for_other_options(name, opts):
    """Longer wavelet filters wrap the ring buffer several times; other scales and readouts; a short conv."""
    torch.manual_seed(0)
    _check_prefill_then_steps(_causal(name, **opts))


@pytest.mark.parametrize("lengths", [[T0 + 140, T0 + 137, T0 + 135], [T0 + 140] * 3], ids=["left_padded", "unpadded"])
def test_attention_decoding_past_the_kv_caches_first_capacity_equals_the_forward(lengths):
    """The KV cache starts with room for the prompt and 128 more positions; the 129th step doubles its
    key and value buffers and, when the batch has left padding, its mask of real slots. Decoding on
    past the doubling must still give the forward's outputs (a growth that moved or dropped a cached
    key, or left the mask short, would change every later token), with pads masked or no mask at all.
    Every row's pads lie in the prompt (fewer than T0): a step appends a real token."""
    torch.manual_seed(0)
    state = _check_prefill_then_steps(_causal("attention"), lengths=lengths)
    first_capacity = T0 + 128
    assert state.length == T0 + 140 and state.k.shape[2] == state.v.shape[2] == 2 * first_capacity  # it grew
    padded = len(set(lengths)) > 1
    assert (state.keep is not None) == padded
    if padded:
        assert state.keep.shape == (3, 2 * first_capacity)
        assert state.keep[:, : state.length].sum(1).tolist() == lengths and not state.keep[:, state.length:].any()


@pytest.mark.parametrize("padded", [False, True])
def test_the_kv_cache_grows_by_doubling_whenever_it_is_full_and_keeps_every_slot(padded):
    """Appending past the capacity doubles the buffers, every time they fill (2 -> 4 -> 8 -> 16 here),
    keeping each position in its slot; the mask of real slots grows with them; `length` and the RoPE
    position `n_real` count the appends. (Decoding past one doubling is checked against the forward above.)"""
    from mixers.attention import KVCache

    B, H, hd = 2, 1, 3  # hd != capacity: a growth test keyed on the wrong axis cannot pass
    # a full cache of two slots (row 0's first one a pad when padded): keys -1, values -2
    keep = torch.tensor([[False, True], [True, True]]) if padded else None
    cache = KVCache(torch.full((B, H, 2, hd), -1.0), torch.full((B, H, 2, hd), -2.0), keep, 2,
                    torch.tensor([1, 2]) if padded else torch.tensor([2, 2]))
    for i in range(2, 11):
        cache.append(torch.full((B, H, 1, hd), float(i)), torch.full((B, H, 1, hd), -float(i)))
    assert cache.length == 11 and cache.k.shape == cache.v.shape == (B, H, 16, hd)
    assert cache.k[0, 0, :11, 0].tolist() == [-1.0, -1.0] + [float(i) for i in range(2, 11)]
    assert cache.v[1, 0, :11, 2].tolist() == [-2.0, -2.0] + [-float(i) for i in range(2, 11)]
    assert cache.n_real.tolist() == ([10, 11] if padded else [11, 11])
    if padded:
        assert cache.keep.shape == (B, 16)
        assert cache.keep[:, :11].tolist() == [[False] + [True] * 10, [True] * 11] and not cache.keep[:, 11:].any()


@pytest.mark.parametrize("name", mixers.names())
def test_steps_from_an_empty_state_equal_the_forward(name):
    """Decoding from nothing: no state at all, or the state of an empty prompt's prefill ((B, 0, D) in, no
    outputs). The steps after either are the forward's. (gated_context's pairwise scan folded an empty
    prompt forever: a RecursionError.)"""
    torch.manual_seed(1)
    m = _causal(name).eval()
    x = torch.randn(2, 5, D)
    with torch.no_grad():
        ref = m(x)
        y0, empty = m.prefill(x[:, :0])
        assert y0.shape == (2, 0, D)
        for state in (None, empty):
            ys = []
            for t in range(x.shape[1]):
                y, state = m.step(x[:, t], state)
                ys.append(y)
            torch.testing.assert_close(torch.stack(ys, 1), ref, rtol=1e-5, atol=1e-5)


class _CumulativeMean(Mixer):
    """A causal mixer with no step of its own (never registered): the mean of the real inputs so far."""

    name = "cumulative_mean"

    def forward(self, x, pad_mask=None):
        keep = torch.ones(x.shape[:2]) if pad_mask is None else pad_mask.float()
        return (x * keep[..., None]).cumsum(1) / keep.cumsum(1).clamp_min(1)[..., None]


def test_a_mixer_without_step_decodes_by_rerunning_its_prefix():
    m = _CumulativeMean(D, causal=True)
    assert m.decode_path == "rerun"
    _check_prefill_then_steps(m)
    x, pad_mask = _left_padded()
    _, state = m.prefill(x[:, :T0], pad_mask[:, :T0])
    _, state = m.step(x[:, T0], state)
    assert isinstance(state, RerunState) and state.x.shape[1] == T0 + 1


def test_the_rerun_fallback_steps_from_an_empty_state():
    """`step(x_t, None)` with no prefill (an empty prefix) starts the fallback's prefix
    from nothing, with no pad mask: the first output is the forward of a one-token sequence, and each
    step after it gives the forward's output at that position, its state the inputs so far, unmasked."""
    m = _CumulativeMean(D, causal=True)
    x = torch.randn(3, 5, D, generator=torch.Generator().manual_seed(2))
    state, ys = None, []
    for t in range(x.shape[1]):
        y, state = m.step(x[:, t], state)
        ys.append(y)
        assert state.x.shape == (3, t + 1, D) and state.pad_mask is None
    torch.testing.assert_close(ys[0], m(x[:, :1])[:, 0])
    torch.testing.assert_close(torch.stack(ys, 1), m(x))


@pytest.mark.parametrize("name", mixers.names())
def test_bidirectional_mixers_refuse_to_step(name):
    """Decoding runs left to right: a bidirectional mixer's prefill would hand a state built from a
    prompt its positions saw both ways, so neither prefill nor step runs."""
    m = mixers.build(name, D, causal=False)
    with pytest.raises(RuntimeError, match="bidirectional"):
        m.step(torch.randn(1, D), None)
    with pytest.raises(RuntimeError, match="bidirectional"):
        m.prefill(torch.randn(1, 3, D))


# ----------------------------------------------------------------------------------------------
# The LM and greedy decoding
# ----------------------------------------------------------------------------------------------

SPECIAL = SpecialTokens(pad=0, unk=1, bos=2, eos=3, sep=4, mask=5)
VOCAB = 40


def _lm(mixer: str, norm: str = "pre", seed: int = 0) -> LM:
    torch.manual_seed(seed)
    cfg = LMConfig(vocab_size=VOCAB, d_model=D, n_layers=2, mixer=mixer, causal=True, mlp_hidden=48, norm=norm)
    model = LM(cfg).eval()
    with torch.no_grad():  # larger weights: the mixers, not the input embedding, decide the next token
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(20.0)
    return model


def _prompts(seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(6, VOCAB, (n,), generator=g).tolist() for n in (9, 4, 13, 6)]


@pytest.mark.parametrize("name,norm", [(n, "pre") for n in mixers.names()] + [("mamba", "post"), ("attention", "hybrid")])
def test_lm_prefill_and_steps_equal_its_forward(name, norm):
    model = _lm(name, norm)
    x, pad_mask = _left_padded()
    ids = (x[..., 0].abs() * 100).long() % VOCAB
    with torch.no_grad():
        ref = model(ids, pad_mask, right_padded=False)
        h0, states = model.prefill(ids[:, :T0], pad_mask[:, :T0])
        hs = [h0]
        for t in range(T0, ids.shape[1]):
            h, states = model.step(ids[:, t], states)
            hs.append(h[:, None])
    torch.testing.assert_close(torch.cat(hs, 1)[pad_mask], ref[pad_mask], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", mixers.names())
def test_greedy_decoding_with_state_gives_the_tokens_of_the_prefix_rerun(name):
    model = _lm(name)
    obj = build_objective("autoregressive", SPECIAL, "chunked")
    rerun = dataclasses.replace(obj.opts, decode="rerun")
    prompts = _prompts()
    with_state = obj.generate(model, prompts, max_new=8, batch_size=3)
    obj.opts = rerun
    reference = obj.generate(model, prompts, max_new=8, batch_size=3)
    assert with_state == reference
    assert any(len(a) > 1 for a in reference)  # the comparison covers several steps, not only the prefill


def test_greedy_decoding_covers_the_fallback_and_says_so(monkeypatch):
    """A mixer without a step decodes through the fallback: same tokens, and the path is named."""
    model = _lm("attention")
    for blk in model.blocks:  # replace the mixers by a stepless one
        blk.mixer = _CumulativeMean(D, causal=True)
    obj = build_objective("autoregressive", SPECIAL, "chunked")
    assert "rerun" in obj.decode_path(model) and model.decode_paths() == ["rerun"]
    with_state = obj.generate(model, _prompts(1), max_new=6, batch_size=2)
    obj.opts = dataclasses.replace(obj.opts, decode="rerun")
    assert with_state == obj.generate(model, _prompts(1), max_new=6, batch_size=2)


def test_the_decoding_path_is_named_for_the_row():
    """The results row says how answers were decoded: carried state when every mixer has a step, the
    rerun fallback when one lacks it (above), the reference when asked."""
    model = _lm("attention")
    obj = build_objective("autoregressive", SPECIAL, "chunked")
    assert model.decode_paths() == ["state"]
    assert obj.decode_path(model) == "state: prefill, then one token per step (KV cache / carried state)"
    obj.opts = dataclasses.replace(obj.opts, decode="rerun")
    assert obj.decode_path(model) == "rerun: the whole prefix through the model per token"


@pytest.mark.parametrize("decode", ["state", "rerun"])
def test_decoding_stops_as_soon_as_every_row_has_ended(monkeypatch, decode):
    """A row that has emitted EOS is done; once every row is, the batch stops. A model that answers
    EOS at once costs one pass over the prompts, not `max_new` of them (gen_latency_ms and the
    evaluation's cost count on it): no step after the prefill, one forward per batch when rerunning.
    A model that never ends costs exactly `max_new` tokens: max_new - 1 steps after the prefill (the
    last token needs no step), or max_new forwards when rerunning."""
    model = _lm("attention")
    calls = {"step": 0, "forward": 0}
    step, forward = model.step, model.forward

    def counted(name, fn):
        def run(*a, **k):
            calls[name] += 1
            return fn(*a, **k)
        return run

    monkeypatch.setattr(model, "step", counted("step", step))
    monkeypatch.setattr(model, "forward", counted("forward", forward))
    monkeypatch.setattr(model, "logits", lambda h: torch.nn.functional.one_hot(
        torch.full(h.shape[:-1], SPECIAL.eos), VOCAB).float())  # EOS, whatever the prefix
    obj = build_objective("autoregressive", SPECIAL, "chunked", decode=decode)
    assert obj.generate(model, _prompts(), max_new=8, batch_size=2) == [[], [], [], []]
    assert calls == ({"step": 0, "forward": 0} if decode == "state" else {"step": 0, "forward": 2})
    calls.update(step=0, forward=0)
    monkeypatch.setattr(model, "logits", lambda h: torch.nn.functional.one_hot(
        torch.full(h.shape[:-1], 7), VOCAB).float())  # never EOS
    assert obj.generate(model, _prompts(), max_new=5, batch_size=2) == [[7] * 5] * 4
    assert calls == ({"step": 2 * 4, "forward": 0} if decode == "state" else {"step": 0, "forward": 2 * 5})
    calls.update(step=0, forward=0)
    monkeypatch.setattr(model, "prefill", counted("forward", model.prefill))
    assert obj.generate(model, _prompts(), max_new=0, batch_size=2) == [[], [], [], []]
    assert calls == {"step": 0, "forward": 0}  # no token asked for: no prefill, no forward


def test_decode_option_is_checked():
    with pytest.raises(ValueError, match="decode must be one of"):
        build_objective("autoregressive", SPECIAL, "chunked", decode="beam")


# ----------------------------------------------------------------------------------------------
# The benchmark and its report section
# ----------------------------------------------------------------------------------------------


def test_decode_bench_writes_rows_that_the_report_draws(tmp_path):
    from benchmarks import decode as bd
    from core.results import read_rows
    from reports import write_reports
    from reports.load import check_row

    out = tmp_path / "results" / bd.RESULTS_NAME
    cfg = bd.DecodeConfig(mixers=["attention", "gated_context"], contexts=[8, 16], batches=[2], preset="tiny",
                          steps=2, reps=1, rerun=True)
    rows = bd.run(cfg, torch.device("cpu"), out, log=lambda s: None)
    assert read_rows(out) == rows and len(rows) == 4 and len({r["key"] for r in rows}) == 4
    for r in rows:
        check_row(r, "row")
        assert r["status"] == "ok" and r["decode_path"] == "state"
        assert r["step_ms"] > 0 and r["prefill_ms"] > 0 and r["speedup"] == r["rerun_ms"] / r["step_ms"]
        assert r["state_floats"] == r["batch"] * LM_STATE[r["mixer"]](r["context"])
    by = {(r["mixer"], r["batch"], r["context"]): r for r in rows}
    # the KV cache grows with the context; the context vector does not (2 rows x 2 layers x 64 fp32)
    assert by[("attention", 2, 16)]["state_bytes"] > by[("attention", 2, 8)]["state_bytes"]
    assert by[("gated_context", 2, 16)]["state_bytes"] == by[("gated_context", 2, 8)]["state_bytes"] == 2 * 2 * 64 * 4
    write_reports(tmp_path / "results", tmp_path / "reports")
    text = (tmp_path / "reports" / "benchmarks" / "README.md").read_text()
    assert "## Decoding cost versus context" in text and "decode_cpu" in text
    assert "| gated_context | 2 |" in text and "state (torch_step)" in text


LM_STATE = {  # the tiny preset's per-sequence claim (2 layers, d_model 64)
    "attention": lambda T: 2 * 2 * T * 64,
    "gated_context": lambda T: 2 * 64,
}


def test_report_legend_names_each_rows_decoding_path():
    from reports.tables import decode_paths_line

    row = lambda mixer, obj, path: {"mixer": mixer, "objective": obj, "status": "ok",  # noqa: E731
                                    "metrics": {"decode_path": path} if path else {}}
    ar = build_objective("autoregressive", SPECIAL, "chunked")
    line = decode_paths_line([row("attention", "autoregressive", ar.decode_path(_lm("attention"))),
                              row("mamba", "autoregressive", ar.decode_path(_lm("mamba"))),
                              row("mamba", "diffusion", "rerun: bidirectional"), row("mamba", "autoregressive", None)])
    assert "`state: prefill, then one token per step (KV cache / carried state)` (2 cells)" in line
    assert "`rerun: bidirectional` (1 cells)" in line and "before stateful decoding existed" in line


@pytest.mark.parametrize("name", mixers.names())
def test_the_decoding_state_is_the_state_the_mixer_claims(name):
    """`state_floats(T)` is what decoding carries: every number of the state after a prompt of T
    tokens (one sequence), KV caches counted by the positions in use."""
    from benchmarks.decode import tensors

    m = _causal(name).eval()
    if m.decode_path != "state":
        pytest.skip("rerun fallback: its state is the prefix itself")
    T = 11
    _, state = m.prefill(torch.randn(1, T, D))
    if name == "attention":
        assert state.length == T and 2 * state.k[:, :, :T].numel() == m.state_floats(T)
        return
    assert sum(t.numel() for t in tensors(state)) == m.state_floats(T)  # token counters included


def test_mamba_step_calls_the_fused_state_update_with_its_documented_contract(monkeypatch):
    """CUDA path's contract, on CPU: mamba-ssm's `selective_state_update(state, x, dt, A, B, C, D, z,
    dt_bias, dt_softplus)` updates state (B, Di, N) in place and returns the gated output (B, Di). A
    stand-in with those semantics must give what the PyTorch step gives."""
    import mixers.mamba as mm

    def fake(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
        assert dt_bias is None and not dt_softplus and state.shape == (x.shape[0], x.shape[1], A.shape[1])
        state.copy_(torch.exp(dt[..., None] * A) * state + (dt * x)[..., None] * B[:, None, :])
        return ((state * C[:, None, :]).sum(-1) + D * x) * torch.nn.functional.silu(z)

    torch.manual_seed(0)
    m = mixers.build("mamba", D, causal=True).eval()
    x, pad_mask = _left_padded()
    _, st = m.prefill(x[:, :T0], pad_mask[:, :T0])
    xs, z = (t[:, 0] for t in m.in_proj(x[:, T0:T0 + 1]).chunk(2, dim=-1))
    monkeypatch.setattr(mm, "_selective_state_update", fake)
    with torch.no_grad():
        y_ref, st_ref = mm._direction_step(m.fwd, xs, z, mm.MambaState(st.conv.clone(), st.h.clone()), fused=False)
        y, st_new = mm._direction_step(m.fwd, xs, z, st, fused=True)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(st_new.h, st_ref.h)
    torch.testing.assert_close(st_new.conv, st_ref.conv)


class _HostTensors:
    """Counts tensors of more than one element built from host values (`torch.tensor(list)`,
    `from_numpy`: aten.lift_fresh), i.e. the uploads a decoding loop makes on CUDA, each a host-device
    round trip. (A Python scalar filled in, `x[..., i] = -inf`, is a 0-d value passed along, not a copy.)"""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        outer = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if func.overloadpacket is torch.ops.aten.lift_fresh and args[0].numel() > 1:
                    outer.n += 1
                return func(*args, **(kwargs or {}))

        self.n, self.mode = 0, Mode()

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)


@pytest.mark.parametrize("objective", ["autoregressive", "diffusion"])
def test_decoding_uploads_per_batch_not_per_prompt_or_step(objective):
    """On a GPU every tensor built from host values is a copy the host waits for: the decoders built each
    prompt row with its own copy, and masked diffusion indexed MASK and PAD with a Python list (a tensor
    uploaded) at every sampler step. A batch's prompts now go up as one array; the sampler's steps
    upload nothing. So the count of host-built tensors does not grow with prompts or steps."""
    torch.manual_seed(0)
    model = LM(LMConfig(vocab_size=VOCAB, d_model=D, n_layers=2, mixer="attention",
                        causal=objective == "autoregressive", mlp_hidden=48)).eval()

    def count(n_prompts: int, steps: int) -> int:
        opts = {"steps": steps, "gen_length": 8} if objective == "diffusion" else {}
        obj = build_objective(objective, SPECIAL, "chunked", **opts)
        prompts = (_prompts() * 3)[:n_prompts]
        with _HostTensors() as h:
            obj.generate(model, prompts, max_new=8, batch_size=8)
        return h.n

    base = count(2, 2)
    assert count(8, 2) == base and count(8, 8) == base  # one batch: more rows, more steps, no more copies


class _Allowed:
    """A task's answer constraint, scripted: after k answer tokens, the ids of `steps[k]` (then only EOS)."""

    def __init__(self, steps: list[list[int]]):
        self.steps = steps

    def next_tokens(self, prefix):
        return self.steps[len(prefix)] if len(prefix) < len(self.steps) else [SPECIAL.eos]

    def tokens(self):
        return sorted({i for s in self.steps for i in s} | {SPECIAL.eos})

    def longest_answer(self, ids):
        return list(ids)  # every answer these steps allow may end anywhere


@pytest.mark.parametrize("decode", ["state", "rerun"])
def test_greedy_decoding_under_a_constraint_takes_the_best_allowed_token_at_every_step(decode):
    """Batched decoding under per-prompt constraints against a reference written out here: one prompt at
    a time, the whole sequence through the model, the argmax over the ids allowed after the answer so far.
    Both paths (carried state, prefix rerun) must give its tokens, and the constraint must change them."""
    model = _lm("attention")
    obj = build_objective("autoregressive", SPECIAL, "chunked", decode=decode)
    prompts = _prompts()
    g = torch.Generator().manual_seed(1)
    cons = [_Allowed([torch.randperm(VOCAB - 6, generator=g)[:3].add(6).tolist() + ([SPECIAL.eos] if k >= 2 else [])
                      for k in range(5)]) for _ in prompts]
    expected = []
    for p, c in zip(prompts, cons):
        answer: list[int] = []
        while len(answer) < 8:
            h = model(torch.tensor([p + answer]))[0, -1]
            allowed = c.next_tokens(answer)
            nxt = allowed[int(model.logits(h)[allowed].argmax())]
            if nxt == SPECIAL.eos:
                break
            answer.append(nxt)
        expected.append(answer)
    got = obj.generate(model, prompts, max_new=8, batch_size=3, constraints=cons)
    assert got == expected
    assert any(len(a) > 2 for a in got)  # several steps decided under the constraint
    assert got != obj.generate(model, prompts, max_new=8, batch_size=3)  # and it changed the answers


class _EndsOnEvenLengths(_Allowed):
    """Answers may end only after an even number of tokens (as a span may not end inside a character)."""

    def longest_answer(self, ids):
        return list(ids[: len(ids) // 2 * 2])


@pytest.mark.parametrize("decode", ["state", "rerun"])
def test_an_answer_stopped_by_max_new_is_cut_to_where_the_constraint_lets_it_end(decode):
    """Greedy decoding that stops at `max_new` (no EOS) may stop where no answer may end: the answer is then
    cut back to its longest prefix the constraint allows (`longest_answer`), on both paths."""
    model = _lm("attention")
    obj = build_objective("autoregressive", SPECIAL, "chunked", decode=decode)
    prompts = _prompts()
    steps = [list(range(6, VOCAB))] * 8  # never EOS: every answer runs to max_new
    free = obj.generate(model, prompts, max_new=3, batch_size=3, constraints=[_Allowed(steps) for _ in prompts])
    assert {len(a) for a in free} == {3}
    cut = obj.generate(model, prompts, max_new=3, batch_size=3, constraints=[_EndsOnEvenLengths(steps) for _ in prompts])
    assert cut == [a[:2] for a in free]
