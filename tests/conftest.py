from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from fixtures.jsquad_mini import write_offline, write_official  # noqa: E402

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
# grids in tests train at the preset's rate unless a test asks for a sweep (tests/test_lr_sweep.py does)
os.environ.setdefault("WAVEBENCH_LR", "preset")

SHARED_JSQUAD = ROOT.parent / "shared" / "data" / "jsquad-v1.3"


@pytest.fixture
def offline_dir(tmp_path: Path) -> Path:
    return write_offline(tmp_path / "jsquad")


@pytest.fixture
def official_dir(tmp_path: Path) -> Path:
    return write_official(tmp_path / "jsquad-official")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def interpreter():
    """For the Triton tests named *interp*: they run only in the subprocess that chose Triton's interpreter
    (TRITON_INTERPRET=1) before Triton was imported: each Triton test file's `test_the_interpreter_suite`."""
    import mixers._scan_triton as st

    if st.triton is None or not st.interpreting():
        pytest.skip("runs in the interpreter subprocess (test_the_interpreter_suite)")
