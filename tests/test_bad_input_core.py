"""core/: the clear one-line errors a user gets for a device or a preset the run cannot have."""
from __future__ import annotations

import pytest
import torch

from core.env import resolve_device
from core.presets import PRESETS, get_preset


@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_asking_for_cuda_without_cuda_is_a_one_line_error(name, monkeypatch):
    """`--device cuda` on a machine where torch sees no GPU fails at once and says so, instead of a
    deep CUDA error from the first tensor moved (or a silent fallback to a CPU run of the GPU grid).
    torch.cuda is made to see no device, so this holds on a GPU machine too."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"^--device cuda asked for, but torch sees no CUDA device$"):
        resolve_device(name)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")


def test_an_unknown_preset_is_an_error_naming_the_presets():
    """A misspelt preset names every preset there is, so it is fixed without reading code."""
    with pytest.raises(ValueError, match=r"^unknown preset 'smal'; presets: tiny, small, base$"):
        get_preset("smal")
    assert {n: get_preset(n) for n in PRESETS} == PRESETS
