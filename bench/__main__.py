"""Collect every bench/<area>.py module's rows() and print one table.

A row is (name, measured, unit, goal, ok): `goal` is text such as "< 0.5 s"; `ok` is True,
False, or None where the figure has no pass/fail goal. `python -m bench AREA...` runs only
those areas; `--json` prints the rows as JSON.
"""

import importlib
import json
import pkgutil
import sys
import time
import traceback
from pathlib import Path

from rich.console import Console
from rich.table import Table


def areas():
    here = Path(__file__).parent
    return sorted(m.name for m in pkgutil.iter_modules([str(here)]) if not m.name.startswith("_"))


def main(argv):
    as_json = "--json" in argv
    wanted = [a for a in argv if not a.startswith("-")] or areas()
    rows, console = [], Console(stderr=as_json)
    for area in wanted:
        start = time.monotonic()
        console.print("[dim]bench: {} ...[/dim]".format(area))
        try:
            module = importlib.import_module("bench." + area)
            for row in module.rows():
                rows.append((area,) + tuple(row))
        except Exception as e:  # a broken benchmark is reported, the others still run
            traceback.print_exc()
            rows.append((area, "error: {}".format(e), "", "", "", False))
        console.print("[dim]bench: {} done in {:.1f} s[/dim]".format(area, time.monotonic() - start))
    if as_json:
        print(json.dumps([dict(zip(("area", "name", "measured", "unit", "goal", "ok"), r)) for r in rows],
                         indent=1))
        return 0
    table = Table(title="V2G controller benchmarks (this machine; VM figures are the MicroPython VM)")
    for col in ("area", "figure", "measured", "unit", "goal", "met"):
        table.add_column(col, justify="right" if col == "measured" else "left")
    for area, name, measured, unit, goal, ok in rows:
        text = "{:,.3g}".format(measured) if isinstance(measured, float) else str(measured)
        met = {True: "[green]yes[/green]", False: "[red]no[/red]", None: "-"}[ok]
        table.add_row(area, name, text, unit, goal, met)
    out = Console()
    if not out.is_terminal:
        out = Console(width=170)   # a file or a pipe: keep each row on one line
    out.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
