"""Fail a release build whose executable passes 40 MB, or grew more than 5 % over the last release's.

    python build/size_gate.py dist/registry [previous-release-asset]

The previous asset is what `gh release download` fetched (the raw .exe, or the .tar.gz holding
`registry`); without one (the first release) only the 40 MB ceiling applies.
"""

from __future__ import annotations

import sys
import tarfile
from pathlib import Path

LIMIT = 40_000_000  # bytes (40 MB): a download people still take without thinking twice
GROWTH = 0.05


def asset_size(path: Path) -> int:
    if path.name.endswith(".tar.gz"):
        with tarfile.open(path) as archive:
            member = next(m for m in archive.getmembers() if m.isfile() and Path(m.name).name == "registry")
            return member.size
    return path.stat().st_size


def check(size: int, previous: int | None) -> list[str]:
    problems = []
    if size > LIMIT:
        problems.append(f"{size:,} bytes is over the {LIMIT:,}-byte ceiling")
    if previous is not None and size > previous * (1 + GROWTH):
        problems.append(f"{size:,} bytes is {size / previous - 1:.1%} more than the last release's "
                        f"{previous:,} (at most {GROWTH:.0%})")
    return problems


def main(arguments: list[str]) -> int:
    size = Path(arguments[0]).stat().st_size
    previous = asset_size(Path(arguments[1])) if len(arguments) > 1 else None
    problems = check(size, previous)
    print(f"executable: {size:,} bytes; last release: "
          f"{'none' if previous is None else f'{previous:,} bytes'}")
    for problem in problems:
        print(f"size gate: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
