"""The neutral layer: what every other package may share, importing nothing from them.

registry (self-registering name -> class tables), data (SeqSet, Batch, the batch sampler), env (device,
autocast, provenance of a run: device name, package versions, git commit), presets (model sizes),
schema (what a results row is: its version, required keys, provenance, task metric declarations,
upgrades of older rows), results (reading and appending rows atomically), files (writing a whole
file by a rename, for caches and the files worker processes hand back) and processes (stopping a
subprocess with everything it started).

The one rule of direction (tests/test_layers.py enforces it): core imports only the standard
library, numpy and torch; mixers and tasks import core only (never each other, never the trainer);
harness (the trainer) imports core, mixers and tasks; reports import core only; benchmarks and the
CLI (run_matrix.py) sit on top.
"""
