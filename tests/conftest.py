from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from fixtures.jsquad_mini import TRAIN_TEXTS, write_offline, write_official  # noqa: E402

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
# grids in tests train at the preset's rate unless a test asks for a sweep (tests/test_lr_sweep.py does)
os.environ.setdefault("WAVEBENCH_LR", "preset")

SHARED_JSQUAD = ROOT.parent / "shared" / "data" / "jsquad-v1.3"


@pytest.fixture
def offline_dir(tmp_path: Path) -> Path:
    return write_offline(tmp_path / "jsquad")


@pytest.fixture
def official_dir(tmp_path: Path) -> Path:
    return write_official(tmp_path / "jsquad-official")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def tok(tmp_path_factory):
    """The fixture tokenizer (MeCab + SentencePiece, vocabulary 300) trained on the hand-made training
    articles, once for the whole session."""
    from tasks.tokenizer import TokenizerSettings, train_or_load

    return train_or_load(TRAIN_TEXTS, TokenizerSettings(vocab_size=300), tmp_path_factory.mktemp("tok"))


@pytest.fixture
def interpreter(monkeypatch):
    """For the Triton tests named *interp*: they run only in the subprocess that chose Triton's interpreter
    (TRITON_INTERPRET=1) before Triton was imported: each Triton test file's `test_the_interpreter_suite`.
    Every kernel they launch is checked for out-of-bounds loads, stores and atomics (tests/interp_bounds.py)."""
    import mixers._scan_triton as st

    if st.triton is None or not st.interpreting():
        pytest.skip("runs in the interpreter subprocess (test_the_interpreter_suite)")
    import interp_bounds

    interp_bounds.install(monkeypatch)


@pytest.fixture
def torch_config():
    """`set(module, name, value)`: a torch config entry (torch._dynamo.config, torch._inductor.config) for one
    test, restored after it. Not `monkeypatch.setattr`: since pytest 9.2 its undo deletes an attribute the
    module's `__dict__` does not hold, and deleting a config entry hides it (`hasattr` false, dynamo's own
    reads raise) for the rest of the session: every later compile failed."""
    saved = []

    def set_(module, name: str, value) -> None:
        saved.append((module, name, getattr(module, name)))
        setattr(module, name, value)

    yield set_
    for module, name, value in reversed(saved):
        setattr(module, name, value)


@pytest.fixture
def step_clock(monkeypatch):
    """A virtual clock for the trainer, so a test of a time budget asserts no real time: `install(cost)`
    makes harness.train's perf_counter read the clock (returned, a one-item list) and advances it by
    `cost(run, stage, batch)` seconds at every training step, before the step's own work."""
    import types

    import harness.train as ht

    clock = [0.0]
    monkeypatch.setattr(ht, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    real = ht._Run._loss_backward

    def install(cost):
        def costed(self, fn, stage, batch):
            clock[0] += cost(self, stage, batch)
            return real(self, fn, stage, batch)

        monkeypatch.setattr(ht._Run, "_loss_backward", costed)
        return clock

    return install


@pytest.fixture
def step_gradients(monkeypatch):
    """Per training step (single process): `own`, the norm of the gradient of that step's loss alone (taken
    from the loss as the trainer computes it; a step that raises records nothing), and `seen`, the norm
    of the gradient the optimizer is handed; with the step's `losses` and the model's `modes` (training or
    not). Adam's step does not depend on a gradient's scale, so a missing clip or zero_grad shows here, not
    in the loss."""
    import types

    from harness.distributed import SingleProcess

    rec = types.SimpleNamespace(own=[], seen=[], losses=[], modes=[])
    loss, real_step = SingleProcess.loss, torch.optim.AdamW.step

    def norm(grads) -> float:
        return float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads if g is not None])))

    def recording(self, objective, model, batch, *a):
        out = loss(self, objective, model, batch, *a)
        params = [p for p in model.parameters() if p.requires_grad]
        rec.own.append(norm(torch.autograd.grad(out, params, retain_graph=True, allow_unused=True)))
        rec.losses.append(float(out.detach()))
        rec.modes.append(model.training)
        return out

    def step(self, *a, **k):
        rec.seen.append(norm([p.grad for g in self.param_groups for p in g["params"]]))
        return real_step(self, *a, **k)

    monkeypatch.setattr(SingleProcess, "loss", recording)
    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    return rec
