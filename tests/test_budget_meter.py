"""The budget's own arithmetic, without training: what one batch is (check_budget), how the A100 speed
factor is measured on a GPU (best of its rounds), and which recorded factor a resumed grid adopts and how.
Fake clocks and fake tensors throughout: no real matmul is timed and nothing sleeps."""
from __future__ import annotations

import re
import types

import pytest
import torch

import harness.budget as hb
from core.data import SeqSet
from harness.budget import Budget, BudgetError, BudgetMeter, adopt_speed, check_budget, recorded_speed


def _rows(n: int, length: int) -> SeqSet:
    """`n` sequences of `length` tokens each (mean length = length)."""
    seqs = [[2] + [7] * (length - 2) + [3] for _ in range(n)]
    return SeqSet.from_lists(seqs, [[False] * (length - 1) + [True] for _ in seqs], 0)


# ---------------------------------------------------------------- check_budget: what one batch is


def test_a_token_budget_of_exactly_one_batch_is_enough():
    """One batch of 8 rows of 12 tokens is 96 tokens: a budget of 96 trains one step and is accepted;
    95 cannot cover it and is refused, saying how much one batch is."""
    data = _rows(20, 12)
    check_budget(Budget.parse("tokens=96"), data, batch_size=8)
    with pytest.raises(BudgetError, match=r"smaller than one batch \(~96 tokens\)"):
        check_budget(Budget.parse("tokens=95"), data, batch_size=8)


def test_a_token_sized_batch_is_measured_in_tokens_not_rows():
    """With batch_tokens set, a batch holds batch_tokens // mean length rows whatever batch_size says:
    48 tokens of 12-token rows is 4 rows (48 tokens), so a 48-token budget covers a batch even though
    batch_size (8 rows, 96 tokens) would not."""
    data = _rows(20, 12)
    check_budget(Budget.parse("tokens=48"), data, batch_size=8, batch_tokens=48)
    with pytest.raises(BudgetError, match=r"~48 tokens"):
        check_budget(Budget.parse("tokens=47"), data, batch_size=8, batch_tokens=48)


def test_a_training_set_smaller_than_a_batch_is_one_batch():
    """A batch never holds more rows than the training set has: 3 rows of 12 tokens is a 36-token batch,
    even at batch_size 8 (a small task's budget must not be refused for rows that do not exist)."""
    data = _rows(3, 12)
    check_budget(Budget.parse("tokens=36"), data, batch_size=8)
    with pytest.raises(BudgetError, match=r"~36 tokens"):
        check_budget(Budget.parse("tokens=35"), data, batch_size=8)


def test_time_budgets_are_not_held_to_a_batch_of_tokens():
    """Only a tokens= budget is a count to compare with a batch; seconds are not tokens."""
    data = _rows(20, 12)
    for text in ("seconds=0.5", "a100_seconds=0.5"):
        check_budget(Budget.parse(text), data, batch_size=8)


# ---------------------------------------------------------------- the speed factor on a GPU


def test_a_gpus_factor_is_the_best_of_its_timed_rounds(monkeypatch):
    """On CUDA the factor is a bf16 8192^3 matmul, the best of 5 rounds of 10 calls: a GPU ramps its
    clocks up from idle, so a slow round is the ramp, not the device. Fake tensors and a fake clock
    (no GPU needed): the warm-up calls cost 100 s, and the rounds' calls cost DT x (4, 2, 1, 3, 5).
    The factor must come from the fastest round (10 x DT), not the last, the first or the slowest."""
    clock, DT, calls, shapes = [0.0], 1e-3, [0], []
    per_round = (4.0, 2.0, 1.0, 3.0, 5.0)

    class Fake:
        def __matmul__(self, other):
            i = calls[0]
            calls[0] += 1
            clock[0] += 100.0 if i < 3 else DT * per_round[(i - 3) // 10]
            return None

    def randn(*size, **kw):
        shapes.append((size, kw["dtype"]))
        return Fake()

    monkeypatch.setattr(hb, "_FACTOR_CACHE", {})
    monkeypatch.setattr(hb, "torch", types.SimpleNamespace(randn=randn, bfloat16=torch.bfloat16, float32=torch.float32))
    monkeypatch.setattr(hb, "sync", lambda device: None)
    monkeypatch.setattr(hb, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    info = hb.device_speed(torch.device("cuda"))
    assert shapes == [((8192, 8192), torch.bfloat16)] * 2 and calls[0] == 3 + 5 * 10
    tflops = 2 * 8192**3 / DT / 1e12  # the fastest round: 10 calls in 10 x DT
    assert info["a100_factor"] == pytest.approx(tflops / 252, rel=1e-9)
    assert info["matmul"] == "bfloat16 8192^3, best of 5 x 10"


# ---------------------------------------------------------------- a resumed grid's recorded factor


def _row(speed, status="ok", device="cuda: NVIDIA H200", budget="a100_seconds=60"):
    return {"status": status, "device": device, "budget": budget, "budget_info": {"budget": budget, "speed": speed}}


def test_a_recorded_speed_without_a_numeric_factor_is_passed_over():
    """A row whose speed has no number for a100_factor (cut short, or hand-edited) cannot meter a cell: adopting
    it would leave the meters without a factor. The next ok row's speed is the one a resume takes."""
    budget = Budget.parse("a100_seconds=60")
    good = {"a100_factor": 0.4, "basis": "matmul"}
    rows = [_row({"basis": "matmul"}), _row({"a100_factor": None}), _row({"a100_factor": "0.3"}), _row(good)]
    assert recorded_speed(rows, "cuda: NVIDIA H200", budget) is good
    assert recorded_speed(rows[:3], "cuda: NVIDIA H200", budget) is None


def test_adopting_a_speed_reaches_meters_built_before_and_keeps_what_this_process_measured(monkeypatch):
    """adopt_speed updates the cached speed in place: a meter built already (a grid's plans are built
    before the resume's factor is read) meters with the adopted factor. What this process measured is kept
    beside it as measured_now; a measured_now the recorded speed carried from an earlier resume is not
    this process's and is dropped."""
    device = torch.device("cpu")
    monkeypatch.setattr(hb, "_FACTOR_CACHE", {str(device): {"a100_factor": 0.002, "matmul_tflops": 0.5}})
    meter = BudgetMeter(Budget.parse("a100_seconds=10"), device)
    recorded = {"a100_factor": 0.001, "matmul_tflops": 0.25, "measured_now": 0.003}
    assert adopt_speed(device, recorded) == 0.002
    assert meter.speed == {"a100_factor": 0.001, "matmul_tflops": 0.25, "measured_now": 0.002}
    assert meter.fraction(0, 5000.0) == pytest.approx(0.5)  # 5,000 s x 0.001 of a 10 s budget
    assert meter.describe()["speed"]["a100_factor"] == 0.001
    monkeypatch.setattr(hb, "_FACTOR_CACHE", {})  # a process that has measured nothing: no measured_now at all
    assert adopt_speed(device, recorded) is None
    assert hb._FACTOR_CACHE[str(device)] == {"a100_factor": 0.001, "matmul_tflops": 0.25}


# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize("text", ["tokens=1e400", "seconds=1e999", "a100_seconds=9e9999"])
def test_an_infinite_budget_is_refused_when_parsed(text):
    """A number too large for a float parses as inf: a budget that never ends training, and whose str()
    (the cell key, the grid's file name) raised OverflowError later instead of one clear error now."""
    with pytest.raises(BudgetError, match="budget must be a finite"):
        Budget.parse(text)
    assert str(Budget.parse("tokens=1e20")) == "tokens=100000000000000000000"  # large but finite: fine


@pytest.mark.parametrize("text", ["tokens=1.2.3", "seconds=e", "tokens=1e", "a100_seconds=+", "tokens=_"])
def test_an_amount_of_number_characters_that_is_no_number_is_one_clear_error(text):
    """The pattern admits any run of digits, dots, e, + and _ (so 1e5 and 3_000 parse); a run that is
    still no number is refused as a BudgetError naming the text, not a bare float() ValueError."""
    with pytest.raises(BudgetError, match=f"^budget amount is not a number: {re.escape(repr(text))}$"):
        Budget.parse(text)
    assert Budget.parse("tokens=3_000") == Budget("tokens", 3000.0)  # the underscore form is a number


def test_a_budgets_slug_is_its_text_with_a_dash_for_the_file_names():
    assert Budget.parse("tokens=3000").slug == "tokens-3000"
    assert Budget.parse("a100_seconds=0.5").slug == "a100_seconds-0.5"


def test_a_batch_of_fewer_tokens_than_a_row_still_holds_one_row():
    """batch_tokens below the mean length (6 of 12) is one row per batch, 12 tokens, never zero rows."""
    data = _rows(20, 12)
    check_budget(Budget.parse("tokens=12"), data, batch_size=8, batch_tokens=6)
    with pytest.raises(BudgetError, match=r"~12 tokens"):
        check_budget(Budget.parse("tokens=11"), data, batch_size=8, batch_tokens=6)


def test_a_meters_check_counts_rows_unless_told_a_token_batch():
    data = _rows(20, 12)
    meter = BudgetMeter(Budget.parse("tokens=95"), torch.device("cpu"))
    with pytest.raises(BudgetError, match=r"~96 tokens"):  # 8 rows of 12
        meter.check(data, 8)
    assert meter.check(data, 8, batch_tokens=48) is meter  # 4 rows of 12


def test_each_timed_round_waits_for_the_gpu_before_and_after(monkeypatch):
    """CUDA calls return before the GPU has run them: a round's clock must start after a sync (the warm-up
    done) and stop after one (its own calls done), or it times the launches, not the matmuls."""
    events: list[str] = []

    class Fake:
        def __matmul__(self, other):
            events.append("mm")

    monkeypatch.setattr(hb, "_FACTOR_CACHE", {})
    monkeypatch.setattr(hb, "torch", types.SimpleNamespace(randn=lambda *s, **k: Fake(), bfloat16=torch.bfloat16,
                                                           float32=torch.float32))
    monkeypatch.setattr(hb, "sync", lambda device: events.append("sync"))
    monkeypatch.setattr(hb, "time", types.SimpleNamespace(perf_counter=lambda: events.append("clock") or float(len(events))))
    hb.device_speed(torch.device("cuda"))
    assert events == ["mm"] * 3 + (["sync", "clock"] + ["mm"] * 10 + ["sync", "clock"]) * 5


def test_an_adopted_speed_replaces_the_measured_one_whole(monkeypatch):
    """A recorded speed (an older row may carry fewer fields) replaces this process's measurement field by
    field: none of the measured fields stays behind beside it, except as measured_now."""
    device = torch.device("cpu")
    monkeypatch.setattr(hb, "_FACTOR_CACHE", {str(device): {"a100_factor": 0.002, "matmul_tflops": 0.5,
                                                            "matmul": "float32 1024^3, best of 1 x 5"}})
    adopt_speed(device, {"a100_factor": 0.001})
    assert hb._FACTOR_CACHE[str(device)] == {"a100_factor": 0.001, "measured_now": 0.002}
