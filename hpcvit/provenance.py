"""What a result was made with: versions, the accelerator, the code's commit and whether it was modified.

Recorded once per run (MLflow params and a ``requirements.txt`` artifact) and in every export's model card.
Reads installed package metadata, never runs pip.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

_SOURCE = Path(__file__).parent


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(_SOURCE), *args], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_commit() -> str:
    """The commit of hpcvit's source tree (``unknown`` outside a git checkout)."""
    out = _git("rev-parse", "HEAD")
    return out.strip() if out else "unknown"


def git_dirty() -> str:
    """``true`` when tracked files of the source tree differ from the commit, ``false``, or ``unknown``."""
    out = _git("status", "--porcelain", "--untracked-files=no", "--", ".")
    return "unknown" if out is None else str(bool(out.strip())).lower()


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment() -> dict[str, str]:
    """Python, platform, hpcvit/torch/timm versions, CUDA/cuDNN and the GPU model (``none`` without one), and
    the source commit with its modified flag."""
    import torch

    from hpcvit import __version__

    cuda = torch.cuda.is_available()
    return {
        "python.version": platform.python_version(), "platform": platform.platform(),
        "hpcvit.version": __version__, "hpcvit.git_commit": git_commit(), "hpcvit.git_dirty": git_dirty(),
        "torch.version": torch.__version__, "timm.version": package_version("timm"),
        "cuda.version": str(torch.version.cuda) if cuda else "none",
        "cudnn.version": str(torch.backends.cudnn.version()) if cuda else "none",
        "gpu.model": torch.cuda.get_device_name(0) if cuda else "none",
    }


def requirements() -> str:
    """Every installed distribution as ``name==version`` lines, sorted (what ``pip freeze`` lists)."""
    seen = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and name.lower() not in seen:
            seen[name.lower()] = f"{name}=={dist.version}"
    return "\n".join(seen[k] for k in sorted(seen)) + "\n" + f"# python {sys.version.split()[0]}\n"
