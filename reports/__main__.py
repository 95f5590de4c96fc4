"""python -m reports [--out DIR] [--grid NAME]: rebuild reports/ from results/."""
import argparse
import sys
from pathlib import Path

from reports import write_reports

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default=".", help="root holding results/ (reports/ is written beside it)")
    p.add_argument("--grid", default=None)
    a = p.parse_args()
    for path in write_reports(Path(a.out) / "results", Path(a.out) / "reports", a.grid):
        print(path)
    sys.exit(0)
