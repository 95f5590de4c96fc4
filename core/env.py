"""What a results row says about where it ran: device, package versions, git commit."""
from __future__ import annotations

import os
import platform
import re
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import torch

PACKAGES = ("torch", "triton", "sentencepiece", "fugashi", "unidic-lite", "cut-cross-entropy", "PyWavelets",
            "mamba-ssm", "causal-conv1d", "flash-attn", "numpy", "pandas", "seaborn", "datasets")


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work, so a wall-clock reading covers it (a no-op elsewhere)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> int | None:
    """Start a peak-memory window on a GPU; returns the bytes allocated now (None elsewhere: never a
    made-up number)."""
    if device.type != "cuda":
        return None
    torch.cuda.reset_peak_memory_stats(device)
    return int(torch.cuda.memory_allocated(device))


def peak_memory(device: torch.device) -> int | None:
    """Bytes allocated at most since the window began, on a GPU; None elsewhere."""
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def autocast(device: torch.device):
    """bf16 autocast on CUDA; plain fp32 elsewhere (CPU bf16 is slow and not what we measure)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def pythonpath_with(root: Path) -> str:
    """PYTHONPATH for a child process (a warm-up worker, a Ray worker, a torchrun rank): `root` first, so
    it imports this repository whatever its working directory, then the caller's PYTHONPATH, so packages
    installed there (as the GPU check installs its wheels) still import."""
    return os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but torch sees no CUDA device")
    return dev


def gpu_slug(device: torch.device) -> str:
    """'h200' for an NVIDIA H200, 'a100-sxm4-80gb', …; '' off CUDA: for names of files and grids that must
    not mix one GPU's figures with another's."""
    if device.type != "cuda":
        return ""
    return re.sub(r"[^a-z0-9]+", "-", device_name(str(device)).lower().removeprefix("nvidia ")).strip("-")


@lru_cache(maxsize=None)
def device_name(device: str) -> str:
    """'NVIDIA H200' or 'cpu: <processor> (N threads)': every figure names its device."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {cpu} ({torch.get_num_threads()} threads)"


@lru_cache(maxsize=None)
def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    if torch.version.cuda:
        out["cuda"] = torch.version.cuda
    return out


@lru_cache(maxsize=None)
def git_commit(root: Path | None = None) -> str | None:
    """HEAD of the checkout this code runs from, '+dirty' when it has uncommitted changes: tracked files
    changed anywhere, or untracked files inside a package (a new mixer file changes what runs, a new
    results file does not).

    A copy of a checkout without its `.git` (a lent GPU machine receives the working tree only) names its
    commit in $WAVEBENCH_COMMIT, recorded with "(declared)", since nothing here can check it."""
    here = Path(root) if root is not None else Path(__file__).resolve().parent
    declared = os.environ.get("WAVEBENCH_COMMIT", "").strip()
    declared = f"{declared} (declared)" if declared else None
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return declared
        top = Path(subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=here, capture_output=True, text=True,
                                  timeout=10).stdout.strip())
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=top,
                                capture_output=True, text=True, timeout=10).stdout.splitlines()
        dirty = any(not line.startswith("??") or _in_package(top, line[3:].strip().strip('"')) for line in status)
        return sha.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return declared


def _in_package(top: Path, rel: str) -> bool:
    """Is `rel` (relative to the repository root) inside a top-level Python package of the repository?"""
    parts = Path(rel).parts
    return len(parts) > 1 and (top / parts[0] / "__init__.py").exists()
