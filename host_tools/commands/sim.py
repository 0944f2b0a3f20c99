"""`v2g sim`: run a scenario against the controller firmware in simulated time."""

import os
import sys

import click
from rich.markup import escape

from host_tools import sim as simlib
from host_tools.commands._checks import check_out_file, check_plot_file
from host_tools.scenario import ScenarioError, load

_MODE_STYLE = {"charging": "green", "discharging": "magenta", "charge_only": "yellow",
               "fault": "bold red", "paused": "cyan", "connected": "blue", "idle": "dim"}


class _LiveView:
    """One compact row per interval of simulated time, events highlighted as they happen."""

    def __init__(self, console, scenario):
        self.console = console
        dur_s = scenario["duration_ms"] // 1000
        # keep a long run readable: about 300 rows at most
        self.every_ms = max(1, dur_s // 300) * 1000
        self.next_ms = 0
        self.header_done = False

    def header(self):
        self.console.print("[bold]{:>7} {:2} {:>5} {:>11} {:>6} {:>5} {:>17} {:>17}  {}[/bold]".format(
            "t s", "CP", "duty%", "mode", "amps", "SoC%", "charge limit", "discharge limit", "errors"))
        self.header_done = True

    def __call__(self, rec, _line=None):
        kind = rec.get("kind")
        if kind == "tick":
            if rec["t_ms"] < self.next_ms:
                return
            self.next_ms = (rec["t_ms"] // self.every_ms + 1) * self.every_ms
            if not self.header_done:
                self.header()
            style = _MODE_STYLE.get(rec["mode"], "")
            self.console.print("{:>7.1f} {:2} {:>5.1f} [{}]{:>11}[/] {:>6.1f} {:>5.1f} {:>17} {:>17}  {}".format(
                rec["t_ms"] / 1000, rec["cp_state"], rec["pwm_duty_pct"], style or "default", rec["mode"],
                rec["amps"], rec["soc_pct"],
                "{:.1f} A {}".format(rec["limit_charge_a"], rec["limit_charge_src"]),
                "{:.1f} A {}".format(rec["limit_discharge_a"], rec["limit_discharge_src"]),
                " ".join(rec["errors"]) or "-"), highlight=False)
        elif kind == "event":
            code = rec.get("code")
            src = rec.get("src", "")
            if code:
                style = "bold red" if rec.get("on", True) else "bold green"
                if src == "host":
                    style = "bold yellow"
                label = "{} {}".format(code, "raised" if rec.get("on", True) else "cleared") \
                    if src == "controller" else code
            elif src == "scenario":
                style, label = "bold cyan", "scenario"
            elif src == "host":
                style, label = "yellow", "host"
            else:
                style, label = "dim", src
            # the message is data: brackets in it ("[config]", "[timeout]") are text, not markup
            self.console.print("{:>7.1f} [{}]>> {}: {}[/]".format(rec["t_ms"] / 1000, style, escape(label),
                                                                 escape(rec["msg"])),
                               highlight=False, markup=True)


def _print_summary(console, result):
    s = result.summary
    console.print()
    console.print("[bold]summary[/bold]  energy in {:.3f} Wh, out {:.3f} Wh; SoC {:.1f} % -> {:.1f} %; "
                  "boots {}".format(s["energy_in_wh"], s["energy_out_wh"], s["soc_start_pct"], s["soc_pct"],
                                    s["boots"]), highlight=False)
    errs = ", ".join("{} x{}".format(k, v) for k, v in s["errors"].items()) or "none"
    console.print("         error codes: {}".format(errs), highlight=False)
    if s.get("heap_peak_bytes") is not None:
        console.print("         firmware heap peak (live, sampled every 10 s): {} bytes".format(
            s["heap_peak_bytes"]), highlight=False)


@click.command(name="sim")
@click.argument("scenario_file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Write the timeline (JSON Lines) to standard output.")
@click.option("--vm", type=click.Choice(simlib.VMS), default=None,
              help="Interpreter that runs the firmware (default: the scenario's `vm`, else micropython).")
@click.option("--out", "out_file", type=click.Path(dir_okay=False), default=None,
              help="Write the timeline here (default without --json: build/sim/<scenario>.jsonl).")
@click.option("--plot", "plot_file", type=click.Path(dir_okay=False), default=None,
              help="Plot the run (current, SoC, temperatures, grid, pilot, mode, LED/cooling, events): "
                   ".png (matplotlib) or .html (one self-contained interactive page).")
def cli(scenario_file, as_json, vm, out_file, plot_file):
    """Simulate a whole station from SCENARIO_FILE (TOML, see docs/simulator.md).

    The controller firmware runs in the MicroPython VM (or CPython) against a plant model of
    the EV, battery, meter and grid, in simulated time: the same timeline every run. An
    invalid scenario is refused before anything runs, naming the file, the event and the problem.
    """
    from rich.console import Console

    err_console = Console(stderr=True, soft_wrap=True)
    try:
        scenario = load(scenario_file)
    except ScenarioError as e:
        err_console.print("[bold red]invalid scenario:[/] {}".format(escape(str(e))), highlight=False)
        sys.exit(2)
    # where the results go is checked before the run, so a long run is never lost to a bad path
    check_out_file(out_file, "--out", (scenario_file,), make_parents=True)
    if out_file is None and not as_json:
        check_out_file(str(simlib.default_timeline_path(scenario_file)), "--out (not given: the default)",
                       make_parents=True)
    check_out_file(plot_file, "--plot", (scenario_file, out_file), make_parents=True)
    check_plot_file(plot_file, "--plot", extra=(".html", ".htm"))
    vm_name = vm or scenario["vm"]
    if as_json:
        def on_record(_rec, line):
            # stream as the firmware prints, so a long run shows progress on a pipe
            try:
                sys.stdout.write(line + "\n")
                sys.stdout.flush()
            except BrokenPipeError:
                raise simlib.ReaderGone() from None
    else:
        console = Console(soft_wrap=True)   # rows stay rows in a narrow window or a pipe
        console.print("[bold]v2g sim[/bold] {} on the {} VM: {:.0f} s of station time, {} events".format(
            escape(scenario_file), vm_name, scenario["duration_ms"] / 1000, len(scenario["events"])), highlight=False)
        on_record = _LiveView(console, scenario)
    try:
        result = simlib.simulate(scenario, vm=vm_name, on_record=on_record)
    except simlib.ReaderGone:
        # `v2g sim ... --json | head`: the reader has what it wanted. Standard output goes to
        # /dev/null so that Python's own flush at exit does not complain about the pipe again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except simlib.SimError as e:
        err_console.print("[bold red]simulation failed:[/] {}".format(escape(str(e))), highlight=False)
        sys.exit(1)
    out = err_console if as_json else console
    target = out_file or (None if as_json else simlib.default_timeline_path(scenario_file))
    try:
        if target:
            path = simlib.write_timeline(result, target)
            out.print("timeline: {} ({} records)".format(path, len(result.records)), highlight=False,
                      markup=False)
        if plot_file:
            path = simlib.plot(result, plot_file)
            out.print("plot: {}".format(path), highlight=False, markup=False)
    except OSError as e:
        err_console.print("[bold red]cannot write:[/] {}: {}".format(escape(str(e.filename)), e.strerror),
                          highlight=False)
        sys.exit(1)
    if not as_json:
        _print_summary(console, result)
    out.print("speed: {:.0f} s simulated in {:.2f} s wall = {:.0f}x real time ({} VM)".format(
        result.sim_s, result.wall_s, result.speed, result.vm), highlight=False)


if __name__ == "__main__":   # python -m host_tools.commands.sim (same as `v2g sim`)
    cli()
