"""What `registry version` prints: the version, the commit and date it was built from, the Python.

A frozen executable carries `app/_build_info.py`, written by `build/registry.spec` at build time (and
removed again after the build, so a checkout never shows a stale one). Run from a checkout, the commit
is `git describe`'s; anything that cannot be known is "unknown".
"""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

from app import __version__

UNKNOWN = "unknown"


def _embedded() -> tuple[str, str] | None:
    if not getattr(sys, "frozen", False):
        return None
    try:
        from app import _build_info  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        return None
    return str(_build_info.COMMIT), str(_build_info.BUILD_DATE)


def git_describe(folder: Path) -> str | None:
    try:
        result = subprocess.run(["git", "describe", "--always", "--dirty", "--tags"], cwd=folder,
                                capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def commit_and_date() -> tuple[str, str]:
    embedded = _embedded()
    if embedded is not None:
        return embedded
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / ".git").exists():
        return git_describe(checkout) or UNKNOWN, UNKNOWN
    return UNKNOWN, UNKNOWN


def describe() -> str:
    commit, built = commit_and_date()
    return "\n".join([
        f"registry {__version__}",
        f"commit: {commit}",
        f"built: {built}",
        f"python: {platform.python_version()} ({platform.python_implementation()}, {sys.platform}, "
        f"{platform.machine() or UNKNOWN})",
    ])
