"""`python -m benchmarks.bound_noise`: the final weights of every masked diffusion cell scored again at other
mask seeds, to check the bound's reported Monte Carlo error against its spread (docs/diffusion-noise.md).
What is tested: one record per cell with an estimated bound and none for an exact perplexity; the record's
reported NLL and error are the row's (so the study measures the reported estimator); other seeds give other
numbers, the cell's own seed is not counted twice; two cells' difference is measured over their shared
seeds; each seed's batch sums add up to its NLL, and the sd from the batches is their variances' sum;
the rows are the same numbers with and without the study;
the patched functions are themselves again afterwards; the table's arithmetic on known records; bad input
in one line."""
from __future__ import annotations

import json
import math

import pytest

import harness.cell
import run_matrix
from benchmarks import bound_noise as bn
from core.results import cell_rows, read_rows


def _grid(offline_dir, cache_dir, out) -> list[str]:
    return ["--preset", "tiny", "--budget", "tokens=3000", "--data-dir", str(offline_dir), "--out", str(out),
            "--cache-dir", str(cache_dir), "--no-progress", "--mixers", "attention", "--lr", "preset",
            "--task-opt", "latency_n=1", "--objective-opt", "diffusion.gen_length=8",
            "--objective-opt", "diffusion.steps=8"]


def test_every_estimated_bound_is_scored_again_and_the_rows_are_untouched(offline_dir, tmp_path, cache_dir, capsys):
    patched = (harness.cell.base_row, harness.cell.eval_nll)
    plain, studied = tmp_path / "plain", tmp_path / "studied"
    assert run_matrix.main(_grid(offline_dir, cache_dir, plain)) == 0
    bench = tmp_path / "bound.jsonl"
    assert bn.main(["--bench-out", str(bench), "--mask-seeds", "1,1234,2,1,3", *_grid(offline_dir, cache_dir, studied)]) == 0
    assert (harness.cell.base_row, harness.cell.eval_nll) == patched
    name = "jsquad-offline_tiny_tokens-3000.jsonl"
    rows = {r["objective"]: r for r in cell_rows(read_rows(studied / "results" / name))}
    before = {r["objective"]: r for r in cell_rows(read_rows(plain / "results" / name))}
    scores = ("em", "f1", "ppl", "ppl_bound", "nll_mc_se")  # (not its speed: timed again)
    for objective, row in rows.items():  # the study changes no number of a cell
        was = before[objective]
        assert row["loss_curve"] == was["loss_curve"] and row["per_question"] == was["per_question"]
        assert {k: row["metrics"].get(k) for k in scores} == {k: was["metrics"].get(k) for k in scores}
    records = [json.loads(x) for x in bench.read_text().splitlines()]
    assert [r["objective"] for r in records] == ["diffusion"]  # none for the exact perplexity
    rec, row = records[0], rows["diffusion"]
    assert (rec["key"], rec["mixer"], rec["seed"], rec["nll_seed"]) == (row["key"], "attention", 0, 1234)
    assert rec["command"] == " ".join(_grid(offline_dir, cache_dir, studied))  # what a rerun is grouped by
    assert math.exp(rec["nll"]) == pytest.approx(row["metrics"]["ppl_bound"], rel=1e-12)  # the reported bound
    assert rec["nll_mc_se"] == row["metrics"]["nll_mc_se"] > 0
    assert list(rec["seeds"]) == ["1", "2", "3"]  # the cell's own 1234 and the repeated 1 left out
    nlls = [v[0] for v in rec["seeds"].values()]
    assert len({rec["nll"], *nlls}) == 4 and all(v[1] > 0 for v in rec["seeds"].values())  # other masks
    assert rec["eval_seqs"] == row["data"]["eval_questions"] and rec["samples"] == 8
    # each seed's batches: one sum a batch, the own seed's first, adding up to that seed's NLL times one count
    assert list(rec["batch_nll"]) == ["1234", "1", "2", "3"] and len({len(b) for b in rec["batch_nll"].values()}) == 1
    count = sum(rec["batch_nll"]["1234"]) / rec["nll"]
    assert count == pytest.approx(round(count)) and count > 1
    for s, (nll, _) in rec["seeds"].items():
        assert sum(rec["batch_nll"][s]) / count == pytest.approx(nll, rel=1e-6)
    printed = capsys.readouterr()
    assert "| attention x diffusion, seed 0 | " in printed.out and f"wrote {bench}" in printed.out
    assert "bound_noise: attention x diffusion (seed 0): the bound again at 3 mask seeds" in printed.err
    assert bn.main(["--summarize", str(bench)]) == 0  # the same tables again, from the file
    again = capsys.readouterr().out
    assert again.startswith("| cell | ") and printed.out.endswith(again + f"wrote {bench}\n")


def _rec(nll: float, se: float, seeds: dict, key: str = "k", mixer: str = "m", command: str = "c") -> dict:
    return {"command": command, "key": key, "mixer": mixer, "objective": "diffusion", "seed": 0, "eval_seqs": 50,
            "samples": 8, "nll": nll, "nll_mc_se": se, "seeds": {s: [v, e] for s, (v, e) in seeds.items()}}


def test_the_table_compares_the_reported_error_with_the_spread_over_seeds():
    """Seeds give 1.0, 1.2, 1.4 (sd 0.2, mean 1.2); the reported 1.5 with error 0.1: ratio 0.50, 1.5 sd above
    the mean, bound e^1.5 = 4.5 ± 10.5%. A later record of the same cell replaces an earlier one; a record
    with one other seed has no spread; two seeds that agree have a spread of 0 and no ratio."""
    seeds = {"1": (1.0, 0.09), "2": (1.2, 0.12), "3": (1.4, 0.11)}
    lines = bn.summarize([_rec(9.0, 9.0, seeds), _rec(1.5, 0.1, seeds), _rec(2.0, 0.2, {"1": (2.1, 0.2)}, key="j"),
                          _rec(2.0, 0.2, {"1": (2.1, 0.2), "2": (2.1, 0.3)}, key="i")])
    cells = [line.split(" | ") for line in lines if line.startswith("| m x diffusion")]
    assert cells[0][1:] == ["50", "8", "4.5 ± 10.5%", "0.1000", "0.0900-0.1200", "0.2000", "0.50", "+1.5 sd",
                            "-", "- |"]  # (no batches recorded: no sd from them)
    assert cells[1][6:] == ["-", "-", "-", "-", "- |"]  # one other seed: no spread, no ratio
    assert cells[2][5:] == ["0.2000-0.3000", "0.0000", "-", "-", "-", "- |"]  # two that agree: a spread of 0
    assert any("about 50% (1 / sqrt(2 (n - 1)))" in line for line in lines)  # 3 seeds: 1/sqrt(4)
    assert bn.summarize([]) == [bn.NO_RECORD]


def test_the_sd_from_the_batches_sums_each_batchs_variance_over_every_seed():
    """Two batches at three seeds (the own seed 7 included): 3.0, 3.2, 2.8 (variance 0.04) and 1.0, 1.4, 0.6
    (0.16); the own seed's sums 4.0 over its NLL 2.0: 2 target tokens; sqrt(0.2) / 2 = 0.2236, and the
    reported 0.1 is 0.45 of it. One seed's batches give none."""
    rec = {**_rec(2.0, 0.1, {"1": (2.2, 0.1), "2": (1.7, 0.1)}), "nll_seed": 7,
           "batch_nll": {"7": [3.0, 1.0], "1": [3.2, 1.4], "2": [2.8, 0.6]}}
    assert bn.batch_sd(rec) == pytest.approx(math.sqrt(0.2) / 2)
    line = next(x for x in bn.summarize([rec]) if x.startswith("| m x diffusion"))
    assert line.split(" | ")[-2:] == ["0.2236", "0.45 |"]
    assert math.isnan(bn.batch_sd({**rec, "batch_nll": {"7": [3.0, 1.0]}}))
    assert any("sqrt(batches)" in x for x in bn.summarize([rec]))
    two = {**rec, "nll": 0.5, "batch_nll": {"7": [3.0, 1.0], "1": [3.2, 1.4]}}  # two seeds are enough; 8 tokens
    assert bn.batch_sd(two) == pytest.approx(math.sqrt(0.02 + 0.08) / 8)
    assert math.isnan(bn.batch_sd({**rec, "nll": 0.0}))  # no count to divide by (not a ZeroDivisionError)
    agree = {**rec, "batch_nll": {"7": [3.0, 1.0], "1": [3.0, 1.0]}}  # seeds that agree: sd 0, no ratio
    line = next(x for x in bn.summarize([agree]) if x.startswith("| m x diffusion"))
    assert line.split(" | ")[-2:] == ["0.0000", "- |"]


def test_two_cells_differences_are_measured_paired_over_their_shared_seeds():
    """m's seeds 1.0, 1.2, 1.4 against n's 2.0, 2.1, 2.5: differences -1.0, -0.9, -1.1 over the shared seeds
    1-3 (sd 0.1, n's seed 4 left out); reported 1.5 - 2.3 = -0.8, errors 0.1 and 0.2 combined 0.2236. A cell of
    another command, or one sharing fewer than two seeds, is paired with none."""
    m = _rec(1.5, 0.1, {"1": (1.0, 0.1), "2": (1.2, 0.1), "3": (1.4, 0.1)})
    n = _rec(2.3, 0.2, {"1": (2.0, 0.2), "2": (2.1, 0.2), "3": (2.5, 0.2), "4": (9.0, 0.2)}, key="n", mixer="n")
    other = _rec(2.3, 0.2, n["seeds"], key="o", mixer="o", command="another grid")
    lonely = _rec(2.0, 0.2, {"1": (2.1, 0.2)}, key="j", mixer="j")
    lines = bn.summarize([m, n, other, lonely])
    pairs = [line.split(" | ") for line in lines if ", seed 0 - " in line]
    assert pairs == [["| m x diffusion, seed 0 - n x diffusion, seed 0", "-0.800", "0.1000", "0.2236 |"]]
    assert bn._pairs([m, lonely]) == [] and "independent" in lines[-1]
    two = _rec(2.0, 0.2, {"2": (2.4, 0.2), "1": (2.0, 0.2)}, key="t", mixer="t")  # two shared seeds are enough
    assert bn._pairs([m, two])[3].split(" | ")[1:] == ["-0.500", f"{math.sqrt(0.02):.4f}", "0.2236 |"]  # -1.0, -1.2


@pytest.mark.parametrize("argv, message", [
    (["--mask-seeds", "1,two"], "--mask-seeds takes integers separated by commas; got '1,two'"),
    (["--mask-seeds", "5,5"], "--mask-seeds needs 2 or more different seeds; got '5,5'"),
    (["--summarize", "nowhere.jsonl"], "--summarize: no file nowhere.jsonl")])
def test_bad_input_stops_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        bn.main(argv)
    assert e.value.code == 2 and capsys.readouterr().err.strip().endswith(message)


@pytest.mark.parametrize("seeds", [["--mask-seeds", "5,6,5"], []])
def test_two_seeds_are_enough_and_the_default_is_twelve(seeds, capsys):
    """Two different seeds, and the default, pass the check and reach run_matrix, whose own parser then stops
    at its bad input; the default is seeds 1-12 (docs/diffusion-noise.md's measurement)."""
    with pytest.raises(SystemExit) as e:
        bn.main([*seeds, "--preset", "nosuch"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--preset: invalid choice: 'nosuch'" in err and "--mask-seeds" not in err
    with pytest.raises(SystemExit):
        bn.main(["--help"])
    assert "(default: 1,2,3,4,5,6,7,8,9,10,11,12)" in " ".join(capsys.readouterr().out.split())


def test_a_bad_line_in_a_summarized_file_names_its_place(tmp_path):
    path = tmp_path / "bound.jsonl"
    path.write_text(json.dumps(_rec(1.0, 0.1, {"1": (1.0, 0.1)})) + "\n{oops\n")
    with pytest.raises(SystemExit, match=r"bound.jsonl:2: not a JSON line"):
        bn.main(["--summarize", str(path)])
