"""core/presets.py: the three model sizes are fixed values, and they are shaped for the hardware.

A grid resumes a cell's row by a key that holds the preset's *name*, not its sizes (harness/cell.py),
so a preset changed in place would let a resumed grid mix rows of the old size with rows of the new,
and results cited as "small" would stop meaning one model. A new size is a new preset."""
from __future__ import annotations

import dataclasses

import pytest

from core.presets import PRESETS, Preset


def test_the_presets_are_the_published_sizes():
    got = {n: dataclasses.astuple(p)[1:] for n, p in PRESETS.items()}
    # name: d_model, n_layers, vocab_size, target_params, max_len, batch_size, lr, batch_tokens
    assert got == {
        "tiny": (64, 2, 4000, 500_000, 256, 8, 3e-3, 2048),
        "small": (256, 6, 8000, 10_000_000, 512, 32, 1e-3, 16384),
        "base": (512, 8, 16000, 50_000_000, 512, 32, 6e-4, 16384),
    }, "a preset changed in place: old rows resume under its name; add a new preset instead"


@pytest.mark.parametrize("name", list(PRESETS))
def test_a_preset_is_shaped_for_the_hardware(name):
    """Widths and vocabularies a multiple of 8 (tensor-core tiles; bf16 matmuls fall off them otherwise),
    a token budget per step that holds whole rows of the longest sequence, lengths a power of two."""
    p = PRESETS[name]
    assert p.d_model % 8 == 0 and p.vocab_size % 8 == 0
    assert p.batch_tokens % p.max_len == 0 and p.batch_tokens >= p.max_len
    assert p.max_len & (p.max_len - 1) == 0 and p.batch_tokens & (p.batch_tokens - 1) == 0


def test_a_preset_is_frozen_and_sized_in_sequences_unless_told_tokens():
    """Presets are shared by every cell of a process: one cell must not resize another's."""
    with pytest.raises(dataclasses.FrozenInstanceError):
        PRESETS["tiny"].d_model = 128  # type: ignore[misc]
    p = Preset("x", d_model=8, n_layers=1, vocab_size=8, target_params=1, max_len=8, batch_size=2, lr=1e-3)
    assert p.batch_tokens == 0  # 0: batch_size sequences per step
