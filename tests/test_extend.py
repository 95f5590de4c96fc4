"""Adding a task with a new metric and a mixer with its own FLOP count touches only their own file.

The file below is written to a temporary directory and imported: its `@register` decorators are the
only link to the rest of the code. A tiny grid then runs through `run_matrix.main` in this process
and the report is built from its rows. Nothing in reports/, run_matrix.py or harness/flops.py names
the toy task, its metric or the toy mixer, so what the report and the CLI show of them comes from
the declarations alone. Both are unregistered afterwards, so no other test sees them.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import re
import sys
import textwrap

import pytest
import torch.nn as nn

import mixers
import run_matrix
import tasks
from core.results import cell_rows, read_rows
from harness.model import LM, LMConfig
from fixtures.markdown import table

TOY_MODULE = textwrap.dedent('''
    """A toy task (recall the first token; metric: miss rate, lower is better) and a toy mixer (a running
    mean) that declares its own FLOPs."""
    import dataclasses

    import numpy as np
    import torch
    import torch.nn as nn

    from core.data import SeqSet, SpecialTokens
    from mixers import Mixer, register as register_mixer
    from tasks import Metric, Reference, Task, TaskData, register as register_task

    SPECIAL = SpecialTokens(pad=0, unk=1, bos=2, eos=3, sep=4, mask=5)
    V, T = 32, 8


    def _split(n, seed):
        rng = np.random.default_rng(seed)
        ids = rng.integers(6, V, size=(n, T))
        ids[:, 0], ids[:, -2] = SPECIAL.bos, SPECIAL.sep
        ids[:, -1] = ids[:, 1]  # answer: the first token again
        target = np.zeros((n, T), dtype=bool)
        target[:, -1] = True
        return SeqSet(torch.from_numpy(ids), torch.from_numpy(target), np.full(n, T, dtype=np.int64))


    @register_task("toy")
    class Toy(Task):
        metrics = (Metric("miss_rate", "miss rate", "min", headline=True, fmt=".3f",
                          doc="fraction of answers the model gets wrong (toy metric, lower is better)"),)
        protocols = {"toy-first": "toy: recall the first token of 6 random ones"}

        def prepare(self, ctx):
            return TaskData("toy-first", SPECIAL, V, _split(256, 0), _split(16, 1), _split(32, 2), items=[])

        def model_preset(self, preset, vocab_size, d_model=0):
            return dataclasses.replace(preset, vocab_size=vocab_size, target_params=60_000, batch_tokens=0)

        def evaluate(self, model, objective, data, device, batch_size, progress=None):
            model.eval()
            ev = data.eval.to(device)
            wrong = 0
            with torch.no_grad():
                for batch in ev.iter_batches(batch_size):
                    pred = objective.predict_targets(model, batch)
                    wrong += int(((pred != batch.ids) & batch.target).sum())
            return {"miss_rate": wrong / len(ev), "eval_n": len(ev)}

        def references(self, data, ctx):
            n = len(data.eval)
            return [Reference("always_miss", "baseline", "answer nothing", {"toy": 1},
                              score=lambda: {"miss_rate": 1.0, "eval_n": n}),
                    Reference("oracle", "ceiling", "the gold answer", {"toy": 2},
                              score=lambda: {"miss_rate": 0.0, "eval_n": n})]


    FLOPS_PER_D = 6.0  # a running sum and a division per channel, forward + backward


    @register_mixer("toy")
    class RunningMean(Mixer):
        def __init__(self, d_model, causal, opts=None, proj_norm=False):
            super().__init__(d_model, causal, opts, proj_norm)
            self.proj = nn.Linear(d_model, d_model, bias=False)
            self.norm = self.proj_norm_layer(d_model)

        def forward(self, x, pad_mask=None):  # x (B, T, D) -> (B, T, D): mean of the real tokens so far
            h = self.norm(self.proj(x))
            w = torch.ones_like(x[..., :1]) if pad_mask is None else pad_mask[..., None].to(x.dtype)
            if self.causal:
                return (h * w).cumsum(1) / w.cumsum(1).clamp_min(1.0)
            return ((h * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1.0)).expand_as(h)

        def state_floats(self, seq_len):
            return self.d_model + 1

        def flops_per_token(self, seq_len):
            return FLOPS_PER_D * self.d_model
''')


@pytest.fixture
def toy(tmp_path):
    path = tmp_path / "toy_plugin.py"
    path.write_text(TOY_MODULE)
    spec = importlib.util.spec_from_file_location("toy_plugin", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["toy_plugin"] = module
    try:
        spec.loader.exec_module(module)  # registration happens here, on import
        yield module
    finally:
        sys.modules.pop("toy_plugin", None)
        for registry in (tasks.REGISTRY, mixers.REGISTRY):
            if "toy" in registry.names():
                registry.unregister("toy")
    assert "toy" not in tasks.names() and "toy" not in mixers.names()


def test_a_task_and_a_mixer_from_one_new_file_reach_the_report(toy, tmp_path, capsys, monkeypatch):
    from reports import figures

    monkeypatch.setattr(figures, "_save", lambda fig, path: path)  # drawn, not encoded: seconds (test_reports checks PNGs)
    out = tmp_path / "out"
    args = ["--task", "toy", "--mixers", "toy", "--objectives", "autoregressive", "--seeds", "0,1", "--preset", "tiny",
            "--budget", "tokens=2000", "--lr", "preset", "--no-progress", "--out", str(out),
            "--cache-dir", str(tmp_path / "cache"), "--grid", "g"]
    assert run_matrix.main(args) == 0
    said = capsys.readouterr().out
    rows = read_rows(out / "results" / "g.jsonl")
    cells = cell_rows(rows)
    assert len(cells) == 2 and all(r["status"] == "ok" for r in cells), [r.get("error") for r in cells]

    # the CLI's line per cell shows the new metric, in its declared format
    for r in cells:
        assert f"miss_rate={r['metrics']['miss_rate']:.3f}" in said
    # the rows carry the declarations, model and reference rows alike
    assert all(r["task_metrics"][0]["key"] == "miss_rate" and r["protocol_text"].startswith("toy:") for r in rows)

    # FLOPs: 6N of the linear weights and head, plus what the toy mixer declares for each of its layers
    r = cells[0]
    cfg = LMConfig(**{f.name: r["model"][f.name] for f in dataclasses.fields(LMConfig)})
    model = LM(cfg)
    six_n = 6.0 * (sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear)) + model.head_weight.numel())
    declared = cfg.n_layers * toy.FLOPS_PER_D * cfg.d_model
    assert r["metrics"]["flops_per_token"] == pytest.approx(six_n + declared)
    assert declared > 0 and r["metrics"]["mfu_basis"].startswith("model FLOPs") and "toy's declared" in r["metrics"]["mfu_basis"]

    # the report: a column for the new metric, sorted by it in its own direction (lower first)
    text = (out / "reports" / "g" / "README.md").read_text()
    _, grid = table(text, "## toy · toy-first")
    assert "miss rate" in grid[0]
    values = [float(t["miss rate"].strip("*")) for t in grid]
    assert values == sorted(values) and values[0] == 0.0 and values[-1] == 1.0
    assert grid[0]["mixer"] == "*oracle*" and grid[-1]["mixer"] == "*always_miss*"
    assert "Sorted by miss rate (best first)" in text and "`miss rate`: fraction of answers the model gets wrong" in text
    assert "`toy-first`: toy: recall the first token" in text

    # --help names what the registries hold: the new file's mixer and task too
    helps = " ".join(run_matrix.parser().format_help().split())
    assert re.search(r"--task TASK one of: [^()]*\btoy\b", helps), helps
    assert re.search(r"--mixers MIXERS comma-separated mixer names \([^)]*\btoy\b", helps), helps
    best = [t for t in grid if t["mixer"] == "toy"]
    assert all(re.match(r"(beats|below) always_miss \(miss rate [+-]\d\.\d{3}\)", t["vs best baseline"]) for t in best)
    assert all(t["vs best baseline"].startswith("beats") == (float(t["miss rate"].strip("*")) < 1.0) for t in best)
