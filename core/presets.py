"""Model sizes: the presets every cell, task and benchmark is sized by.

A preset is plain data (no model code), so tasks may size themselves by it (MQAR picks its batch in
sequences) without importing the trainer.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    """A model size. `target_params` counts every parameter, the tied embedding once."""

    name: str
    d_model: int
    n_layers: int
    vocab_size: int  # tokenizer vocabulary the preset is sized for
    target_params: int
    max_len: int  # longest training / evaluation sequence, in tokens
    batch_size: int  # sequences per optimiser step (when batch_tokens is 0)
    lr: float
    batch_tokens: int = 0  # > 0: tokens per optimiser step (rows x padded length), length-bucketed


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("tiny", d_model=64, n_layers=2, vocab_size=4000, target_params=500_000, max_len=256, batch_size=8, lr=3e-3,
               batch_tokens=2048),
        Preset("small", d_model=256, n_layers=6, vocab_size=8000, target_params=10_000_000, max_len=512, batch_size=32, lr=1e-3,
               batch_tokens=16384),
        Preset("base", d_model=512, n_layers=8, vocab_size=16000, target_params=50_000_000, max_len=512, batch_size=32, lr=6e-4,
               batch_tokens=16384),
    )
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return PRESETS[name]
