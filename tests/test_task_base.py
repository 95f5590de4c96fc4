"""tasks/__init__.py: what every task inherits: its options, the preset its models are sized by, and the
generation latency a row reports."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import tasks
from core.presets import get_preset


def test_a_task_has_its_options_given_or_its_defaults():
    opts = tasks.Task.Options()
    assert tasks.Task(opts).opts is opts
    assert isinstance(tasks.Task().opts, tasks.Task.Options)


def test_by_default_a_task_sizes_its_models_by_the_preset_at_the_width_asked():
    p = get_preset("small")
    assert tasks.Task().model_preset(p, vocab_size=8000) is p  # no width: the preset itself
    assert tasks.Task().model_preset(p, 8000, d_model=128) == dataclasses.replace(p, d_model=128)


def test_latency_is_the_mean_of_single_answers_after_one_untimed_warm_up(monkeypatch):
    """Items 0..n-1 answered one at a time between two device syncs (the GPU's queued work is inside the
    clock, nothing earlier is), after a warm-up answer of item 0 outside it; in ms per item."""
    events, now = [], [100.0]

    def answer(i):
        events.append(f"answer {i}")
        now[0] += 0.004  # 4 ms an answer

    def clock():
        events.append("clock")
        return now[0]

    monkeypatch.setattr(tasks, "sync", lambda device: events.append("sync"))
    monkeypatch.setattr(tasks.time, "perf_counter", clock)
    assert tasks.latency_ms(answer, 3, torch.device("cpu")) == pytest.approx(4.0)
    assert events == ["answer 0", "sync", "clock", "answer 0", "answer 1", "answer 2", "sync", "clock"]
    events.clear()
    assert tasks.latency_ms(answer, 1, torch.device("cpu")) == pytest.approx(4.0)  # one item is still timed
    assert tasks.latency_ms(answer, 0, torch.device("cpu")) == 0.0
    assert tasks.latency_ms(answer, -1, torch.device("cpu")) == 0.0
    assert events.count("answer 0") == 2  # nothing answered when there is nothing to time
