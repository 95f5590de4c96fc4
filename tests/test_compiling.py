"""harness/compiling.py on its own, without compiling anything: what it asks of torch.compile, how the
compile watch joins and leaves dynamo's callbacks, and how the recompile-limit recorder reads a warning.

test_compile.py checks what compiled models do (graphs counted by a counting backend); these tests pin
the arguments and bookkeeping around them, where a one-token slip (a mode passed as "default", a
callback left behind after a run, a watch that raises when dynamo was reset under it) would not change
any number a compiled step computes. torch.compile is replaced by a recorder here, so they take
milliseconds.
"""
from __future__ import annotations

import logging

import pytest
import torch
import torch._dynamo
from torch import nn

import harness.compiling as hc


class _Compiled(nn.Module):
    """What the stand-in torch.compile returns: the module it was given, and the keywords it got."""

    def __init__(self, inner: nn.Module, kw: dict):
        super().__init__()
        self.inner, self.kw = inner, kw

    def forward(self, *a, **k):
        return self.inner(*a, **k)


@pytest.fixture
def compiles(monkeypatch) -> list[tuple[nn.Module, dict]]:
    """torch.compile replaced by a recorder of (module, keywords)."""
    calls = []

    def fake_compile(module, **kw):
        calls.append((module, kw))
        return _Compiled(module, kw)

    monkeypatch.setattr(hc.torch, "compile", fake_compile)
    return calls


class _Net(nn.Module):
    def __init__(self, n_blocks: int = 2, norm: bool = True):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(3, 3) for _ in range(n_blocks))
        self.norm = nn.LayerNorm(3) if norm else None

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x if self.norm is None else self.norm(x)


@pytest.mark.parametrize("mode", hc.COMPILE_MODES)
def test_the_mode_reaches_torch_compile_except_the_default_which_is_left_to_torch(compiles, mode):
    """"default" is torch's own default and is not passed (a torch whose default differs keeps its own);
    every other mode is passed as `mode=`, beside the caller's own keywords, to each compiled part."""
    net = _Net()
    hc.compile_for_training(net, mode=mode, backend="eager", dynamic=None)
    want = {"backend": "eager", "dynamic": None, **({} if mode == "default" else {"mode": mode})}
    assert len(compiles) == 3 and all(kw == want for _, kw in compiles)


def test_the_blocks_scope_compiles_each_block_and_the_norm_in_a_view_of_the_model(compiles):
    net = _Net(n_blocks=3)
    view, scope = hc.compile_for_training(net)
    assert scope == "blocks" and view is not net
    assert [m for m, _ in compiles] == [*net.blocks, net.norm]
    assert [b.inner for b in view.blocks] == list(net.blocks) and view.norm.inner is net.norm
    assert all(type(b) is nn.Linear for b in net.blocks) and type(net.norm) is nn.LayerNorm  # the model: eager
    x = torch.randn(2, 3)
    torch.testing.assert_close(view(x), net(x))


def test_a_model_without_a_final_norm_gets_its_blocks_compiled_and_no_norm(compiles):
    net = _Net(norm=False)
    view, scope = hc.compile_for_training(net)
    assert scope == "blocks" and [m for m, _ in compiles] == list(net.blocks) and view.norm is None
    x = torch.randn(2, 3)
    torch.testing.assert_close(view(x), net(x))


@pytest.mark.parametrize("n_blocks", [2, 0])
def test_the_model_scope_and_a_model_with_no_blocks_compile_the_whole_model_once(compiles, n_blocks):
    net = _Net(n_blocks=n_blocks)
    step, scope = hc.compile_for_training(net, scope="model" if n_blocks else "blocks")
    assert scope == "model" and [m for m, _ in compiles] == [net] and step.inner is net


def test_a_too_old_torch_is_refused_before_anything_compiles(compiles, monkeypatch):
    monkeypatch.setattr(hc.torch, "__version__", "2.4.1+cu121")
    with pytest.raises(ValueError, match=r"^torch\.compile needs torch >= 2\.5 here \(this is 2\.4\.1\+cu121\)"):
        hc.compile_for_training(_Net())
    assert compiles == []
    hc.check_torch("2.5.0")  # an explicit version is read, not the running torch's
    with pytest.raises(ValueError, match="this is 1.13.1"):
        hc.check_torch("1.13.1")


def test_major_minor_reads_numbers():
    assert hc.major_minor("2.15.0+cu130") == (2, 15) > hc.major_minor("2.5.1") == (2, 5)
    assert hc.major_minor("3.2.0") == (3, 2)


def _recording():
    """A compile start that is not a dynamo frame (a CUDA graph being recorded), as dynamo announces it."""
    from torch._dynamo.callback import CallbackTrigger

    return CallbackTrigger.CUDAGRAPH_RECORDING


def test_the_watch_hears_each_compile_start_while_it_runs_and_leaves_nothing_behind():
    """Registered on entry (dynamo runs it at every compile start), removed on exit: a callback left behind
    would call into a finished training run (and keep it alive) at the next cell's compilations."""
    handler = torch._dynamo.callback_handler
    before = list(handler.start_callbacks)
    heard = []
    with hc.CompileWatch(lambda: heard.append(1)) as watch:
        assert watch._callback in handler.start_callbacks
        with handler.install_callbacks(_recording(), "0"):
            pass
    assert heard == [1]
    assert handler.start_callbacks == before
    with handler.install_callbacks(_recording(), "0"):
        pass
    assert heard == [1]


def test_a_watch_whose_callback_dynamo_reset_cleared_exits_quietly():
    """A grid resets dynamo before each compiled cell, which clears the callbacks: the watch of a run
    under which that happened must not fail on leaving (removing a callback that is gone raises)."""
    handler = torch._dynamo.callback_handler
    with hc.CompileWatch(lambda: None) as watch:
        handler.clear()
    assert watch._callback not in handler.start_callbacks


def test_without_dynamos_callbacks_the_watch_still_attaches_the_limit_recorder(monkeypatch):
    """An older torch has no callback handler: the watch runs on the frame counter alone, enters and exits
    without it, and still attaches the recompile-limit recorder (once however many watches run)."""
    logger = logging.getLogger(hc.LIMIT_LOGGER)
    monkeypatch.setattr(logger, "handlers", [h for h in logger.handlers if h is not hc._LIMIT_HANDLER])
    watch = hc.CompileWatch(lambda: None)
    watch._handler = None
    with watch:
        pass
    with hc.CompileWatch(lambda: None):
        pass
    assert logger.handlers.count(hc._LIMIT_HANDLER) == 1


def test_a_limit_warning_without_a_function_line_is_recorded_with_a_question_mark():
    """The function is what follows the first 'function:', whole; a warning naming none still counts."""
    hc.clear_recompile_limit_hits()
    try:
        hc._LIMIT_HANDLER.emit(logging.LogRecord(hc.LIMIT_LOGGER, logging.WARNING, "x.py", 1,
                                                 "torch._dynamo hit config.cache_size_limit (8)", None, None))
        hc._LIMIT_HANDLER.emit(logging.LogRecord(hc.LIMIT_LOGGER, logging.WARNING, "x.py", 1,
                                                 "torch._dynamo hit config.recompile_limit (8)\n function: 'f' "
                                                 "(a function: b.py:2)", None, None))
        assert hc.recompile_limit_hits() == ["cache_size_limit (8): ?",
                                             "recompile_limit (8): 'f' (a function: b.py:2)"]
    finally:
        hc.clear_recompile_limit_hits()
