"""python -m reports [--out DIR] [--grid NAME]: rebuild reports/ from results/ (rows only)."""
import argparse
import sys
from pathlib import Path

from core.results import ResultsFileError
from reports import write_reports


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default=".", help="root holding results/ (reports/ is written beside it)")
    p.add_argument("--grid", default=None, help="only this grid (results/<grid>.jsonl)")
    a = p.parse_args(argv)
    try:
        paths = write_reports(Path(a.out) / "results", Path(a.out) / "reports", a.grid)
    except ResultsFileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    if not paths:
        print(f"no results files in {Path(a.out) / 'results'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
