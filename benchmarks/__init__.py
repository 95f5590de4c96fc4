"""Measurements, apart from the trainer: each module is a `python -m benchmarks.NAME` command that
appends rows to `results/bench_*.jsonl` (or a JSON file) and never asserts anything (tests do that).

scaling (every mixer alone vs sequence length), loss_memory (the output-loss paths), decode (stateful
decoding), mamba_scan (the parallel scan vs the chunk loop), profile_step (host time of one training
step), measure_lr_sweep (the learning-rate study), gpu_check (all of it on a lent GPU, one command).
"""
