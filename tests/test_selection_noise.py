"""`python -m benchmarks.selection_noise`: every dev check of a masked diffusion cell scored again by other
estimates of its bound (docs/diffusion-noise.md, "Checkpoint selection"). What is tested: one record per
check of an estimated dev loss and none for an exact one; the study's estimate at the trainer's settings is
the logged dev loss (so the others differ from it by their settings alone); training, the chosen checkpoint
and the row are the same numbers with and without the study; the patched functions are themselves again
afterwards; the table's arithmetic on known records; bad input in one line."""
from __future__ import annotations

import json
import math
import types

import pytest

import harness.cell
import harness.train
import run_matrix
from benchmarks import selection_noise as sn
from core.results import cell_rows, read_rows


def _grid(offline_dir, cache_dir, out) -> list[str]:
    return ["--preset", "tiny", "--budget", "tokens=4000", "--data-dir", str(offline_dir), "--out", str(out),
            "--cache-dir", str(cache_dir), "--no-progress", "--mixers", "attention", "--lr", "preset",
            "--dev-tokens", "150", "--task-opt", "latency_n=1", "--objective-opt", "diffusion.gen_length=8",
            "--objective-opt", "diffusion.steps=8"]


def test_every_dev_check_is_scored_again_and_training_is_untouched(offline_dir, tmp_path, cache_dir, capsys):
    patched = (harness.cell.base_row, harness.train.dev_sample, harness.train._Run.eval_point)
    plain, studied = tmp_path / "plain", tmp_path / "studied"
    assert run_matrix.main(_grid(offline_dir, cache_dir, plain)) == 0
    bench = tmp_path / "sel.jsonl"
    assert sn.main(["--bench-out", str(bench), "--mask-seeds", "1,1234,2", *_grid(offline_dir, cache_dir, studied)]) == 0
    assert (harness.cell.base_row, harness.train.dev_sample, harness.train._Run.eval_point) == patched
    rows = {(r["objective"]): r for r in cell_rows(read_rows(studied / "results" / "jsquad-offline_tiny_tokens-4000.jsonl"))}
    before = {(r["objective"]): r for r in cell_rows(read_rows(plain / "results" / "jsquad-offline_tiny_tokens-4000.jsonl"))}
    scores = ("em", "f1", "ppl", "ppl_bound", "nll_mc_se")  # (not its speed: timed again)
    for objective, row in rows.items():  # the study changes no number of a cell
        was = before[objective]
        assert row["loss_curve"] == was["loss_curve"] and row["train"]["best_fraction"] == was["train"]["best_fraction"]
        assert {k: row["metrics"].get(k) for k in scores} == {k: was["metrics"].get(k) for k in scores}
        assert row["per_question"] == was["per_question"]
    records = [json.loads(x) for x in bench.read_text().splitlines()]
    curve = rows["diffusion"]["loss_curve"]
    assert len(curve) >= 2 and [r["objective"] for r in records] == ["diffusion"] * len(curve)  # none for the exact one
    for rec, point in zip(records, curve):
        assert (rec["frac"], rec["step"], rec["logged"]) == (point["frac"], point["step"], point["dev_loss"])
        seeds = rec["sample_seeds"]
        assert list(seeds) == ["1234", "1", "2"]  # the trainer's seed first, no seed twice
        assert round(seeds["1234"], 5) == rec["logged"]  # the study's estimate at the trainer's settings
        assert len(set(seeds.values())) == 3 and rec["ref_a"] != rec["ref_b"]  # other seeds, other masks
        n = rec["seqs"]
        assert 1 <= n["sample"] < n["full"] == rows["diffusion"]["data"]["dev_questions"]  # --dev-tokens 150: a sample
        assert n["sample32768"] == n["full"]  # the fixture's dev slice is smaller than the default sample
        assert rec["sample32768"] == rec["full"]  # the same sequences, the same masks: the same number
        assert rec["command"] == " ".join(_grid(offline_dir, cache_dir, studied))  # what a rerun is grouped by
        assert (rec["key"], rec["seed"], rec["run"], rec["lr"]) == (rows["diffusion"]["key"], 0, 1, rows["diffusion"]["train"]["lr"])
    printed = capsys.readouterr().out
    assert "| attention x diffusion, seed 0 | 1 (" in printed and f"wrote {bench}" in printed
    assert sn.main(["--summarize", str(bench)]) == 0  # the same table again, from the file
    again = capsys.readouterr().out
    assert again.startswith("| cell | ") and printed.endswith(again + f"wrote {bench}\n")


def test_each_estimate_scores_its_data_with_its_samples_and_seed(monkeypatch):
    """The estimates' settings, read back through a stand-in `dev_loss` that answers which data, how many
    mask samples and which seed it was given: `sample_k8` 8 samples, the reference 8 samples at seeds 777
    and 888 on the whole slice, `sample32768` the default sample, the trainer's own seed first."""
    def fake_loss(model, objective, data, batch_size, device, selection):
        assert selection and objective is not trainer  # a copy: the trainer's options are never touched
        return f"{data} k={objective.opts.dev_nll_samples} seed={objective.opts.nll_seed}"

    trainer = types.SimpleNamespace(opts=types.SimpleNamespace(dev_nll_samples=2, nll_seed=1234))
    monkeypatch.setattr(sn, "with_opts", lambda o, **kw: types.SimpleNamespace(opts=types.SimpleNamespace(**kw)))
    monkeypatch.setattr(sn, "dev_loss", fake_loss)
    monkeypatch.setattr(sn, "dev_sample", lambda full, tokens: f"{full}[{tokens}]")
    rec = sn.check_record(None, trainer, "sample", "full", 4, "cpu", (1, 1234, 2))
    assert rec["sample_seeds"] == {"1234": "sample k=2 seed=1234", "1": "sample k=2 seed=1", "2": "sample k=2 seed=2"}
    assert (rec["sample_k8"], rec["full"]) == ("sample k=8 seed=1234", "full k=2 seed=1234")
    assert rec["sample32768"] == "full[32768] k=2 seed=1234"
    assert (rec["ref_a"], rec["ref_b"]) == ("full k=8 seed=777", "full k=8 seed=888")


def _rec(step: float, logged: float, ref: float, k8: float = 0.0, seeds=(0.0, 0.0), run: int = 1) -> dict:
    return {"command": "c", "key": "k", "run": run, "mixer": "m", "objective": "diffusion", "seed": 0, "lr": 0.01,
            "frac": step / 10, "step": step, "logged": logged, "sample_k8": k8 or logged, "sample32768": ref,
            "full": ref, "ref_a": ref + 0.1, "ref_b": ref - 0.1,
            "sample_seeds": {"1234": seeds[0], "1": seeds[1]}, "seqs": {"sample": 3, "sample32768": 7, "full": 9}}


def test_the_table_gives_each_estimates_error_pick_and_regret():
    """Reference 3.0, 2.0, 2.5 at steps 1-3; logged 3.0, 2.2, 2.0 picks step 3 (regret 0.5) and its
    differences stray by -0.2, +0.5, +0.7 (RMS sqrt(0.26)); the full slice equals the reference: error 0,
    regret 0. Over the two mask seeds the differences have sd 0.05 in two pairs and 0 in the third: RMS 0.041."""
    records = [_rec(3, 2.0, 2.5, seeds=(0.0, 0.1)), _rec(1, 3.0, 3.0, seeds=(0.0, 0.0)),
               _rec(2, 2.2, 2.0, seeds=(0.0, 0.1)), _rec(1, 9.0, 9.0, run=2),  # run 2 has one check: no table
               _rec(1, 9.0, 9.0, run=3), _rec(2, 8.0, 8.0, run=3)]  # run 3 has two: a table
    lines = sn.summarize(records)
    table = {line.split(" | ")[3]: line.split(" | ")[4:] for line in lines if line.startswith("| m x diffusion, seed 0 | 1 (")}
    assert table["logged"] == ["3", f"{math.sqrt(0.26):.3f}", "0.30", "0.500 |"]
    assert table["full"] == ["9", "0.000", "0.20", "0.000 |"]
    assert sum(" | 1 (0.01) | 3 | " in line for line in lines) == sum(" | 3 (0.01) | 2 | " in line for line in lines) == 4
    assert not any(" | 2 (0.01) | " in line for line in lines)
    note = next(line for line in lines if line.startswith("- m x diffusion, seed 0, run 1"))
    assert "best check is 0.20" in note and "vary by 0.041 nats" in note and "differ by 0.000" in note
    assert sn.summarize(records[3:4]) == ["No training run with two or more dev checks of an estimated dev loss."]


@pytest.mark.parametrize("argv, message", [
    (["--mask-seeds", "1,two"], "--mask-seeds takes integers separated by commas; got '1,two'"),
    (["--summarize", "nowhere.jsonl"], "--summarize: no file nowhere.jsonl")])
def test_bad_input_stops_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        sn.main(argv)
    assert e.value.code == 2 and capsys.readouterr().err.strip().endswith(message)


def test_a_bad_line_in_a_summarized_file_names_its_place(tmp_path):
    path = tmp_path / "sel.jsonl"
    path.write_text(json.dumps(_rec(1, 3.0, 3.0)) + "\n{oops\n")
    with pytest.raises(SystemExit, match=r"sel.jsonl:2: not a JSON line"):
        sn.main(["--summarize", str(path)])
