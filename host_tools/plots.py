"""Plots of a run, one set of panels for `v2g sim` and `v2g bench`.

Both tools are turned into a `Run` (samples against time, marks for what happened, check
windows), which is drawn as a PNG (matplotlib, `figure()` / `write_png()`) or as one
self-contained HTML page (inline SVG and a few lines of script, nothing fetched:
`write_html()`). Panels, top to bottom, each only when the run has the signal:

    current and limits, SoC, temperatures, grid voltage, grid frequency, pilot state, mode,
    status LED and cooling, check windows, then one lane per kind of mark
    (scenario/bench actions, errors raised, errors cleared).

Labels in a mark lane are packed into rows by their drawn width, so they never overlap
however close in time the marks are.
"""

import json
from pathlib import Path

CP_LEVEL = {"A": 5, "B": 4, "C": 3, "D": 2, "E": 1, "F": 0}
MODES = ("idle", "connected", "paused", "charging", "discharging", "charge_only", "fault")
MODE_COLORS = {"idle": "#d9d9d9", "connected": "#b3cde3", "paused": "#fed9a6", "charging": "#74c476",
               "discharging": "#6baed6", "charge_only": "#fdae6b", "fault": "#fb6a4a"}
# status LED pattern -> the colour the lane is drawn in (docs/status-led.md); blinking and
# breathing patterns are hatched
LED_COLORS = {"idle": "limegreen", "connected": "limegreen", "charging": "limegreen",
              "discharging": "royalblue", "charge_only": "orange", "fault": "red", "update": "cyan",
              "link": "orange"}
LED_STEADY = ("idle", "charge_only")
COOLING_COLORS = {"off": "lightgrey", "starting": "khaki", "running": "lightskyblue",
                  "derated": "orange", "tripped": "red", "none": "white"}

# (panel id, axis label, height in inches, least y span drawn, [(signal, legend label, colour,
# line style, sign)]); the least span keeps a flat 25 °C from looking like a swing
LINE_PANELS = (
    ("current", "current (A)", 2.0, 4, (
        ("amps", "current at meter", "tab:blue", "-", 1),
        ("request_a", "requested", "tab:grey", ":", 1),
        ("limit_charge_a", "charge limit", "tab:green", "--", 1),
        ("limit_discharge_a", "discharge limit (−)", "tab:red", "--", -1))),
    ("soc", "SoC (%)", 0.9, 2, (("soc_pct", "SoC", "tab:purple", "-", 1),)),
    ("temperature", "temperature (°C)", 1.0, 10, (
        ("evse_temp_c", "EVSE", "tab:orange", "-", 1),
        ("battery_temp_c", "battery", "tab:brown", "-", 1))),
    ("grid_v", "grid voltage (V)", 0.9, 20, (("grid_v", "grid voltage", "tab:olive", "-", 1),)),
    ("grid_hz", "grid frequency (Hz)", 0.9, 1, (("grid_hz", "grid frequency", "tab:cyan", "-", 1),)),
)
# mark lanes in drawing order: (lane id, axis label, colour of the marker)
LANES = (("action", "actions", "dimgrey"), ("raised", "errors raised", "tab:red"),
         ("cleared", "errors cleared", "tab:green"))

DPI = 100
WIDTH_IN = 13.0
LEFT_IN, RIGHT_IN = 2.9, 2.0       # room for check names on the left, legends on the right
TOP_IN, BOTTOM_IN, GAP_IN = 0.75, 0.55, 0.12
LABEL_PT = 7
NAME_CHARS = 42                    # check names longer than this are cut on the axis


class Mark:
    """Something that happened at t (s): lane is one of LANES, label the short text drawn."""

    def __init__(self, t, lane, label, detail=""):
        self.t, self.lane, self.label, self.detail = t, lane, label, detail


class Window:
    """A check's time window; ok is True (passed), False (failed) or None (not judged)."""

    def __init__(self, t0, t1, name, ok, detail=""):
        self.t0, self.t1, self.name, self.ok, self.detail = t0, t1, name, ok, detail


class Run:
    def __init__(self, title, verdict, subtitle, duration_s, samples, marks=(), windows=()):
        self.title = title              # the scenario's name or title
        self.verdict = verdict          # "PASSED" / "FAILED" for a bench run, None for a simulation
        self.subtitle = subtitle
        self.duration_s = max(float(duration_s), 1e-3)
        self.samples = samples          # [{"t": s, signal: value}] in time order
        self.marks = list(marks)
        self.windows = list(windows)

    @property
    def heading(self):
        return "{} — {}".format(self.title, self.verdict) if self.verdict else self.title

    def has(self, key):
        return any(s.get(key) is not None for s in self.samples)


def runs(ticks, key):
    """Spans of equal value of a tick field: [(t0_s, t1_s, value)], the last one to the end."""
    out = []
    for r in ticks:
        v = r.get(key)
        t = r["t_ms"] / 1000.0 if "t_ms" in r else r["t"]
        if out and out[-1][2] == v:
            out[-1][1] = t
        else:
            if out:
                out[-1][1] = t
            out.append([t, t, v])
    return [tuple(x) for x in out]


def series(samples, key, sign=1):
    t, y = [], []
    for s in samples:
        v = s.get(key)
        if v is not None:
            t.append(s["t"])
            y.append(sign * v if sign != 1 else v)
    return t, y


# ------------------------------------------------------------------ from the tools

def from_sim(result):
    """A `v2g sim` result (host_tools.sim.SimResult) as a Run."""
    samples = []
    for r in result.ticks():
        s = dict(r)
        s["t"] = r["t_ms"] / 1000.0
        s["cp"] = r.get("cp_state")
        samples.append(s)
    marks = []
    for ev in result.events():
        t = ev["t_ms"] / 1000.0
        if ev.get("src") == "scenario":
            # the driver describes an action as "do key=value ...": keep the kind, if any
            kv = dict(w.split("=", 1) for w in (ev.get("msg") or "").split()[1:] if "=" in w)
            marks.append(Mark(t, "action", _action_label(ev.get("do") or "", kv), ev.get("msg") or ""))
        elif ev.get("code"):
            lane = "raised" if ev.get("on", True) else "cleared"
            marks.append(Mark(t, lane, ev["code"], ev.get("msg") or ""))
    sc = result.scenario
    sub = "{}.toml, simulated on the {} VM".format(sc.get("name", "scenario"), result.vm)
    counts = (result.summary or {}).get("errors") or {}
    sub += "; errors raised: " + (", ".join("{} ×{}".format(c, n) for c, n in sorted(counts.items())) or "none")
    return Run(sc.get("title") or sc.get("name", "scenario"), None, sub, sc["duration_ms"] / 1000.0, samples,
               marks)


def from_bench(result):
    """A `v2g bench` result (host_tools.bench.Result) as a Run with its check windows."""
    samples = []
    for s in result.samples:
        s = dict(s)
        if s.get("request_a") is None:
            s["request_a"] = s.get("can_request_a")
        samples.append(s)
    marks = [Mark(a["t"], "action", _action_label(a["do"], a.get("args") or {}),
                  "{} {}".format(a["do"], json.dumps(a.get("args") or {}))) for a in result.actions]
    marks += [Mark(e["t"], "raised" if e["on"] else "cleared", e["code"], e.get("msg", ""))
              for e in result.events]
    judged = {c.name: c for c in result.checks}
    windows = []
    for ex in result.scenario["expects"]:
        c = judged.get(ex["name"])
        windows.append(Window(ex["after_s"], ex["until_s"], ex["name"], c.ok if c else None,
                              c.detail if c else "not judged"))
    sc = result.scenario
    sub = Path(sc["file"]).name
    if result.setup_error:
        sub += ": set-up failed: " + result.setup_error
    return Run(sc["title"], "PASSED" if result.passed else "FAILED", sub, sc["duration_s"], samples, marks,
               windows)


def _action_label(do, args):
    # the one argument that tells two of the same action apart on the plot
    for k in ("kind", "code"):
        if k in args:
            return "{} {}".format(do, args[k])
    return do


# ------------------------------------------------------------------ PNG

def _text_width_px(text, size=LABEL_PT):
    from matplotlib.backends.backend_agg import RendererAgg
    from matplotlib.font_manager import FontProperties

    global _RENDERER
    if _RENDERER is None:
        _RENDERER = RendererAgg(10, 10, DPI)
    w, h, _ = _RENDERER.get_text_width_height_descent(text, FontProperties(size=size), ismath=False)
    return w, h


_RENDERER = None


def pack_rows(marks, t_end, width_px, text_width=None):
    """Rows for the labels of marks so that none overlaps another in its row.

    Returns [(mark, row, left_aligned)]. A label starts just right of its marker, or ends
    just left of it when it would run past the right edge; the marker itself counts as
    part of the label. Greedy first-fit in time order. text_width(label) -> pixels
    (default: as matplotlib draws it)."""
    ends, out = [], []
    for m in sorted(marks, key=lambda m: m.t):
        w = text_width(m.label) if text_width else _text_width_px(m.label)[0]
        x = m.t / t_end * width_px
        if x + 3 + w <= width_px:
            lo, hi, left = x - 1, x + 3 + w, True
        else:
            lo, hi, left = x - 3 - w, x + 1, False
        row = next((i for i, end in enumerate(ends) if end + 4 <= lo), None)
        if row is None:
            row = len(ends)
            ends.append(0)
        ends[row] = hi
        out.append((m, row, left))
    return out


def figure(run):
    """The matplotlib Figure of a run (the caller saves or inspects it)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    axis_px = (WIDTH_IN - LEFT_IN - RIGHT_IN) * DPI
    _, text_h = _text_width_px("Ag")
    row_in = (text_h + 5) / DPI
    panels = []           # (kind, id, label, height in inches, payload)
    for pid, label, h, span, lines in LINE_PANELS:
        present = [ln for ln in lines if run.has(ln[0])]
        if present:
            panels.append(("lines", pid, label, h, (present, span)))
    if run.has("cp"):
        panels.append(("cp", "pilot", "pilot", 0.8, None))
    if run.has("mode"):
        panels.append(("mode", "mode", "mode", 1.1, None))
    lanes = [(k, run.has(k)) for k in ("led", "cooling")]
    if any(p for _, p in lanes):
        panels.append(("led", "led", "", 0.55, [k for k, p in lanes if p]))
    if run.windows:
        panels.append(("checks", "checks", "checks", max(0.5, len(run.windows) * row_in + 0.1), None))
    for lane, label, color in LANES:
        marks = [m for m in run.marks if m.lane == lane]
        if marks:
            packed = pack_rows(marks, run.duration_s, axis_px)
            rows = max(r for _, r, _ in packed) + 1
            panels.append(("marks", lane, label, max(0.3, rows * row_in + 0.08), (packed, rows, color)))

    height = TOP_IN + BOTTOM_IN + sum(p[3] for p in panels) + GAP_IN * (len(panels) - 1)
    fig = Figure(figsize=(WIDTH_IN, height), dpi=DPI)
    y = height - TOP_IN
    axes = []
    for kind, pid, label, h, payload in panels:
        y -= h
        ax = fig.add_axes((LEFT_IN / WIDTH_IN, y / height, 1 - (LEFT_IN + RIGHT_IN) / WIDTH_IN, h / height),
                          sharex=axes[0] if axes else None)
        y -= GAP_IN
        ax.set_gid(pid)
        ax.set_ylabel(label, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_xlim(0, run.duration_s)
        _DRAW[kind](ax, run, payload)
        axes.append(ax)
    for ax in axes[:-1]:
        ax.tick_params(labelbottom=False)
    axes[-1].set_xlabel("time (s)", fontsize=8)
    _event_lines(run, [ax for ax, p in zip(axes, panels) if p[0] in ("lines", "cp", "mode")])
    fig.suptitle(run.heading, fontsize=13, x=LEFT_IN / WIDTH_IN, ha="left", y=1 - 0.12 / height, va="top",
                 color={"PASSED": "darkgreen", "FAILED": "firebrick"}.get(run.verdict, "black"))
    fig.text(LEFT_IN / WIDTH_IN, 1 - 0.45 / height, run.subtitle, fontsize=8, va="top", color="dimgrey")
    return fig


def _draw_lines(ax, run, payload):
    lines, span = payload
    for key, label, color, style, sign in lines:
        t, y = series(run.samples, key, sign)
        if t and t[-1] < run.duration_s:      # the last value holds to the end
            t, y = t + [run.duration_s], y + [y[-1]]
        ax.step(t, y, where="post", label=label, color=color, linestyle=style, linewidth=1.1)
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    lo, hi = ax.get_ylim()
    if hi - lo < span:
        mid = (hi + lo) / 2
        ax.set_ylim(mid - span / 2, mid + span / 2)
    ax.grid(True, color="#eeeeee", linewidth=0.6)
    if any(ln[4] < 0 for ln in lines):
        ax.axhline(0, color="grey", linewidth=0.5)
    ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=7, frameon=False)
    for w in run.windows:
        if w.ok is False:
            ax.axvspan(w.t0, w.t1, color="tab:red", alpha=0.08, linewidth=0)


def _draw_cp(ax, run, _):
    t, y = series([dict(s, cp=CP_LEVEL.get(s.get("cp"))) for s in run.samples], "cp")
    ax.step(t + [run.duration_s], y + y[-1:], where="post", color="black", linewidth=1.1)
    ax.set_yticks(list(CP_LEVEL.values()), list(CP_LEVEL.keys()))
    ax.set_ylim(-0.5, 5.5)


def _draw_mode(ax, run, _):
    for t0, t1, v in runs(run.samples, "mode"):
        if v in MODES:
            t1 = t1 if t1 > t0 else run.duration_s
            ax.broken_barh([(t0, t1 - t0)], (MODES.index(v) - 0.4, 0.8), facecolors=MODE_COLORS[v],
                           edgecolor="none")
    t, y = series([dict(s, mode=MODES.index(s["mode"]) if s.get("mode") in MODES else None)
                   for s in run.samples], "mode")
    ax.step(t + [run.duration_s], y + y[-1:], where="post", color="black", linewidth=0.8)
    ax.set_yticks(range(len(MODES)), MODES)
    ax.set_ylim(-0.6, len(MODES) - 0.4)


def _draw_led(ax, run, keys):
    axis_px = (WIDTH_IN - LEFT_IN - RIGHT_IN) * DPI
    names = []
    for lane, key in enumerate(reversed(keys)):
        colors = LED_COLORS if key == "led" else COOLING_COLORS
        spans = runs(run.samples, key)
        for i, (t0, t1, v) in enumerate(spans):
            if v is None:
                continue
            if i == len(spans) - 1:
                t1 = run.duration_s
            hatch = None if key != "led" or v in LED_STEADY else "//"
            ax.broken_barh([(t0, max(t1 - t0, 0.05))], (lane + 0.1, 0.8), facecolors=colors.get(v, "white"),
                           edgecolor="grey", linewidth=0.3, hatch=hatch)
            # named inside the span only where the name fits
            if _text_width_px(" " + v, 6)[0] + 2 <= (t1 - t0) / run.duration_s * axis_px:
                ax.text(t0, lane + 0.5, " " + v, va="center", fontsize=6, gid="lane-label")
        names.append("LED" if key == "led" else "cooling")
    ax.set_yticks([i + 0.5 for i in range(len(names))], names)
    ax.set_ylim(0, len(names))


def _draw_checks(ax, run, _):
    n = len(run.windows)
    labels = []
    for i, w in enumerate(run.windows):
        row = n - 1 - i
        color = {True: "tab:green", False: "tab:red", None: "lightgrey"}[w.ok]
        ax.broken_barh([(w.t0, max(w.t1 - w.t0, 0.02))], (row + 0.15, 0.7), facecolors=color, alpha=0.55,
                       edgecolor=color)
        name = w.name if len(w.name) <= NAME_CHARS else w.name[:NAME_CHARS - 1] + "…"
        labels.append((row, "{}  {}".format({True: "pass", False: "FAIL", None: "—"}[w.ok], name), w.ok))
    ax.set_yticks([r + 0.5 for r, _, _ in labels], [t for _, t, _ in labels])
    for tick, (_, _, ok) in zip(ax.get_yticklabels(), labels):
        if ok is False:
            tick.set_color("firebrick")
            tick.set_fontweight("bold")
    ax.set_ylim(0, n)
    ax.grid(True, axis="x", color="#eeeeee", linewidth=0.6)


def _draw_marks(ax, run, payload):
    packed, rows, color = payload
    for m, row, left in packed:
        yc = rows - row - 0.5
        ax.plot([m.t, m.t], [yc - 0.4, yc + 0.4], color=color, linewidth=1.2)
        ax.annotate(m.label, (m.t, yc), xytext=(3 if left else -3, 0), textcoords="offset pixels",
                    ha="left" if left else "right", va="center", fontsize=LABEL_PT, color="black",
                    gid="mark-label", annotation_clip=False)
    ax.set_ylim(0, rows)
    ax.set_yticks([])
    # a lane may be one row high: its name reads across, not up
    ax.set_ylabel(ax.get_ylabel(), rotation=0, ha="right", va="center", fontsize=8)


_DRAW = {"lines": _draw_lines, "cp": _draw_cp, "mode": _draw_mode, "led": _draw_led, "checks": _draw_checks,
         "marks": _draw_marks}


def _event_lines(run, axes):
    for m in run.marks:
        style = {"action": ("grey", ":"), "raised": ("tab:red", "-"), "cleared": ("tab:green", "-")}[m.lane]
        for ax in axes:
            ax.axvline(m.t, color=style[0], linestyle=style[1], linewidth=0.6, alpha=0.5)


def write_png(run, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure(run).savefig(path, dpi=DPI)
    return path


# ------------------------------------------------------------------ HTML

# matplotlib's colour names as CSS
CSS = {"tab:blue": "#1f77b4", "tab:orange": "#ff7f0e", "tab:green": "#2ca02c", "tab:red": "#d62728",
       "tab:purple": "#9467bd", "tab:brown": "#8c564b", "tab:grey": "#7f7f7f", "tab:olive": "#bcbd22",
       "tab:cyan": "#17becf"}
H_LEFT, H_WIDTH, H_RIGHT = 330, 1100, 20        # page geometry in CSS pixels
H_CHAR = 6.7                                    # width of one 11 px monospace character
H_ROW = 16

_STYLE = """
body{font:13px sans-serif;margin:16px;color:#222}
h1{font-size:20px;margin:0}h1.PASSED{color:#1a7f37}h1.FAILED{color:#b42318}
.sub{color:#666;margin:2px 0 10px}
figure{margin:0 0 4px}figcaption{font-size:12px;margin-left:%dpx}
figcaption span{margin-right:14px}
svg text{font-size:11px}svg text.mono{font-family:monospace}
#readout{position:sticky;top:0;background:#fffe;border-bottom:1px solid #ddd;padding:4px 0;
 font:12px monospace;min-height:16px;z-index:1}
pre{font-size:12px}
""" % H_LEFT


def _esc(s):
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def nice_ticks(lo, hi, n=6):
    """Round tick values covering lo .. hi, about n of them."""
    import math

    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    out = []
    v = first
    while v <= hi + 1e-9 * step:
        out.append(round(v, 10))
        v += step
    return out


def _fmt(v):
    return "{:g}".format(round(v, 6))


class _Svg:
    """One panel: plot area x from H_LEFT to H_LEFT + H_WIDTH, y from 4 to height - 20."""

    def __init__(self, run, pid, height, lo=0.0, hi=1.0):
        self.run, self.pid, self.height = run, pid, height
        self.lo, self.hi = lo, hi if hi > lo else lo + 1
        self.top, self.bottom = 4, height - 20
        self.parts = []
        self.below = 0          # room under the plot area for the axis title

    def x(self, t):
        return H_LEFT + t / self.run.duration_s * H_WIDTH

    def y(self, v):
        return self.bottom - (v - self.lo) / (self.hi - self.lo) * (self.bottom - self.top)

    def add(self, s):
        self.parts.append(s)

    def time_axis(self, title=False):
        self.add('<g class="time-axis">')
        for t in nice_ticks(0, self.run.duration_s, 12):
            x = self.x(t)
            self.add('<line x1="{0:.1f}" x2="{0:.1f}" y1="{1}" y2="{2}" stroke="#eee"/>'
                     '<text class="tick" x="{0:.1f}" y="{3}" text-anchor="middle">{4}</text>'.format(
                         x, self.top, self.bottom + 3, self.bottom + 14, _fmt(t)))
        if title:
            self.below = 16
            self.add('<text x="{}" y="{}" text-anchor="end">time (s)</text>'.format(
                H_LEFT + H_WIDTH, self.bottom + 14 + 14))
        self.add("</g>")

    def value_axis(self, ticks):
        for v in ticks:
            y = self.y(v)
            self.add('<line x1="{0}" x2="{1}" y1="{2:.1f}" y2="{2:.1f}" stroke="#eee"/>'
                     '<text x="{3}" y="{4:.1f}" text-anchor="end">{5}</text>'.format(
                         H_LEFT, H_LEFT + H_WIDTH, y, H_LEFT - 4, y + 4, _fmt(v)))

    def event_lines(self):
        for m in self.run.marks:
            color = {"action": "#999", "raised": "#d62728", "cleared": "#2ca02c"}[m.lane]
            self.add('<line x1="{0:.1f}" x2="{0:.1f}" y1="{1}" y2="{2}" stroke="{3}" stroke-width="0.6" '
                     'stroke-opacity="0.6"/>'.format(self.x(m.t), self.top, self.bottom, color))

    def html(self, caption):
        return ('<figure class="panel" id="panel-{0}"><figcaption>{1}</figcaption>'
                '<svg width="{2}" height="{3}" data-t-end="{4}">'
                '<rect x="{5}" y="{6}" width="{7}" height="{8}" fill="none" stroke="#999"/>{9}'
                '<line class="cursor" y1="{6}" y2="{10}" stroke="#000" stroke-width="0.7" visibility="hidden"/>'
                '</svg></figure>').format(
            self.pid, caption, H_LEFT + H_WIDTH + H_RIGHT, self.height + self.below, self.run.duration_s, H_LEFT,
            self.top, H_WIDTH, self.bottom - self.top, "".join(self.parts), self.bottom)


def _step_points(svg, t, y):
    pts = []
    for i, (tt, yy) in enumerate(zip(t, y)):
        if i:
            pts.append("{:.1f},{:.1f}".format(svg.x(tt), svg.y(y[i - 1])))
        pts.append("{:.1f},{:.1f}".format(svg.x(tt), svg.y(yy)))
    return " ".join(pts)


def _html_lines(run, pid, label, span, lines):
    data = []
    for key, name, color, style, sign in lines:
        t, y = series(run.samples, key, sign)
        if t and t[-1] < run.duration_s:
            t, y = t + [run.duration_s], y + [y[-1]]
        data.append((key, name, CSS.get(color, color), style, t, y))
    ys = [v for d in data for v in d[5]]
    lo, hi = min(ys), max(ys)
    if any(ln[4] < 0 for ln in lines):
        lo, hi = min(lo, 0), max(hi, 0)
    if hi - lo < span:
        mid = (hi + lo) / 2
        lo, hi = mid - span / 2, mid + span / 2
    pad = (hi - lo) * 0.05
    svg = _Svg(run, pid, 150 if pid == "current" else 100, lo - pad, hi + pad)
    svg.time_axis()
    svg.value_axis(nice_ticks(lo, hi, 4))
    for w in run.windows:
        if w.ok is False:
            svg.add('<rect x="{:.1f}" y="{}" width="{:.1f}" height="{}" fill="#d62728" fill-opacity="0.08"/>'.format(
                svg.x(w.t0), svg.top, svg.x(w.t1) - svg.x(w.t0), svg.bottom - svg.top))
    svg.event_lines()
    dash = {"-": "", ":": ' stroke-dasharray="2,2"', "--": ' stroke-dasharray="6,3"'}
    for key, name, color, style, t, y in data:
        svg.add('<polyline class="series" data-key="{}" fill="none" stroke="{}" stroke-width="1.3"{} points="{}">'
                '<title>{}</title></polyline>'.format(key, color, dash[style], _step_points(svg, t, y), _esc(name)))
    caption = "<b>{}</b> ".format(_esc(label)) + "".join(
        '<span style="color:{}">━ {}</span>'.format(c, _esc(n)) for _, n, c, _, _, _ in data)
    return svg.html(caption)


def _bands(svg, spans, row_y, row_h, colors, end, hatched=lambda v: False):
    for i, (t0, t1, v) in enumerate(spans):
        if v is None:
            continue
        if i == len(spans) - 1:
            t1 = end
        x0, x1 = svg.x(t0), svg.x(t1)
        svg.add('<rect x="{:.1f}" y="{:.1f}" width="{:.1f}" height="{}" fill="{}" stroke="#999" stroke-width="0.3">'
                '<title>{} {:g}–{:g} s</title></rect>'.format(x0, row_y, max(x1 - x0, 0.5), row_h,
                                                            colors.get(v, "white"), _esc(v), t0, t1))
        if hatched(v):
            svg.add('<rect class="blink" x="{:.1f}" y="{:.1f}" width="{:.1f}" height="{}" fill="url(#led-hatch)" '
                    'pointer-events="none"/>'.format(x0, row_y, max(x1 - x0, 0.5), row_h))
        if (len(v) + 1) * H_CHAR <= x1 - x0:     # named only where the name fits
            svg.add('<text class="mono band-label" x="{:.1f}" y="{:.1f}">{}</text>'.format(
                x0 + 3, row_y + row_h / 2 + 4, _esc(v)))


def _html_mode(run):
    n = len(MODES)
    svg = _Svg(run, "mode", 20 * n + 24, -0.5, n - 0.5)
    svg.time_axis()
    for i, m in enumerate(MODES):
        svg.add('<text x="{}" y="{:.1f}" text-anchor="end">{}</text>'.format(H_LEFT - 4, svg.y(i) + 4, m))
    svg.event_lines()
    for t0, t1, v in runs(run.samples, "mode"):
        if v in MODES:
            t1 = t1 if t1 > t0 else run.duration_s
            y = svg.y(MODES.index(v))
            svg.add('<rect class="mode-band" data-mode="{0}" x="{1:.1f}" y="{2:.1f}" width="{3:.1f}" height="14" '
                    'fill="{4}"><title>{0} {5:g}–{6:g} s</title></rect>'.format(
                        v, svg.x(t0), y - 7, max(svg.x(t1) - svg.x(t0), 0.5), MODE_COLORS[v], t0, t1))
    return svg.html("<b>mode</b>")


def _html_cp(run):
    svg = _Svg(run, "pilot", 100, -0.5, 5.5)
    svg.time_axis()
    for k, v in CP_LEVEL.items():
        svg.add('<text x="{}" y="{:.1f}" text-anchor="end">{}</text>'.format(H_LEFT - 4, svg.y(v) + 4, k))
    svg.event_lines()
    t, y = series([dict(s, cp=CP_LEVEL.get(s.get("cp"))) for s in run.samples], "cp")
    svg.add('<polyline class="series" data-key="cp" fill="none" stroke="#000" points="{}"/>'.format(
        _step_points(svg, t + [run.duration_s], y + y[-1:])))
    return svg.html("<b>pilot state</b>")


def _html_led(run, keys):
    svg = _Svg(run, "led", 20 * len(keys) + 24)
    svg.time_axis()
    for i, key in enumerate(keys):
        y = svg.top + 20 * i + 2
        svg.add('<text x="{}" y="{:.1f}" text-anchor="end">{}</text>'.format(
            H_LEFT - 4, y + 12, "LED" if key == "led" else "cooling"))
        # blinking and breathing LED patterns hatched, as on the PNG
        _bands(svg, runs(run.samples, key), y, 16, LED_COLORS if key == "led" else COOLING_COLORS,
               run.duration_s, hatched=lambda v, k=key: k == "led" and v not in LED_STEADY)
    svg.parts.insert(0, '<defs><pattern id="led-hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
                        'patternTransform="rotate(45)"><line x1="0" y1="0" x2="0" y2="6" stroke="#fff" '
                        'stroke-width="1.2" stroke-opacity="0.7"/></pattern></defs>')
    return svg.html("<b>status LED and cooling</b>")


def _html_checks(run):
    n = len(run.windows)
    svg = _Svg(run, "checks", H_ROW * n + 26)
    svg.time_axis()
    for i, w in enumerate(run.windows):
        y = svg.top + H_ROW * i + 2
        color = {True: "#2ca02c", False: "#d62728", None: "#bbb"}[w.ok]
        word = {True: "pass", False: "FAIL", None: "—"}[w.ok]
        name = w.name if len(w.name) <= NAME_CHARS else w.name[:NAME_CHARS - 1] + "…"
        svg.add('<text class="mono check-name" x="{}" y="{:.1f}" text-anchor="end" fill="{}">{} {}</text>'.format(
            H_LEFT - 4, y + 11, color if w.ok is False else "#222", word, _esc(name)))
        svg.add('<rect class="check-window" data-ok="{}" x="{:.1f}" y="{:.1f}" width="{:.1f}" height="{}" '
                'fill="{}" fill-opacity="0.55" stroke="{}"><title>{}: {:g}–{:g} s, {}</title></rect>'.format(
                    word, svg.x(w.t0), y, max(svg.x(w.t1) - svg.x(w.t0), 1), H_ROW - 4, color, color,
                    _esc(w.name), w.t0, w.t1, _esc(w.detail)))
    return svg.html("<b>checks</b> (window of each; red failed)")


def _html_marks(run, lane, label, color, last):
    marks = [m for m in run.marks if m.lane == lane]
    packed = pack_rows(marks, run.duration_s, H_WIDTH, text_width=lambda s: len(s) * H_CHAR)
    rows = max(r for _, r, _ in packed) + 1
    svg = _Svg(run, lane, H_ROW * rows + 26)
    svg.time_axis(title=last)
    for m, row, left in packed:
        x, y = svg.x(m.t), svg.top + H_ROW * row + 2
        svg.add('<g class="mark"><line x1="{0:.1f}" x2="{0:.1f}" y1="{1:.1f}" y2="{2:.1f}" stroke="{3}" '
                'stroke-width="1.5"/><text class="mono mark-label" x="{4:.1f}" y="{5:.1f}" text-anchor="{6}">{7}'
                '</text><title>{8:.2f} s  {9}</title></g>'.format(
                    x, y, y + H_ROW - 4, color, x + 3 if left else x - 3, y + 10, "start" if left else "end",
                    _esc(m.label), m.t, _esc(m.detail or m.label)))
    return svg.html("<b>{}</b>".format(_esc(label)))


# a cursor that follows the pointer over every panel, with the values at that time
_SCRIPT = """
(function(){
var run=JSON.parse(document.getElementById('run-data').textContent);
var L=%d,W=%d,out=document.getElementById('readout');
function at(t){var s=run.samples,lo=0,hi=s.length-1;if(hi<0)return null;
 while(lo<hi){var m=(lo+hi+1)>>1;if(s[m].t<=t)lo=m;else hi=m-1;}return s[lo];}
document.querySelectorAll('figure.panel svg').forEach(function(svg){
 svg.addEventListener('mousemove',function(e){
  var x=e.clientX-svg.getBoundingClientRect().left;if(x<L||x>L+W)return;
  var t=(x-L)/W*run.duration_s,s=at(t);
  document.querySelectorAll('line.cursor').forEach(function(c){c.setAttribute('x1',x);c.setAttribute('x2',x);
   c.setAttribute('visibility','visible');});
  if(!s)return;
  out.textContent='t = '+t.toFixed(2)+' s   '+run.keys.filter(function(k){return s[k]!=null;})
   .map(function(k){return k+' '+s[k];}).join('   ');
 });});
})();
"""


def html(run, extra=""):
    """The run as one self-contained HTML page (no scripts or styles fetched from anywhere)."""
    keys = [ln[0] for p in LINE_PANELS for ln in p[4]] + ["cp", "mode", "led", "cooling"]
    keys = [k for k in keys if run.has(k)]
    parts = []
    for pid, label, _, span, lines in LINE_PANELS:
        present = [ln for ln in lines if run.has(ln[0])]
        if present:
            parts.append(_html_lines(run, pid, label, span, present))
    if run.has("cp"):
        parts.append(_html_cp(run))
    if run.has("mode"):
        parts.append(_html_mode(run))
    led = [k for k in ("led", "cooling") if run.has(k)]
    if led:
        parts.append(_html_led(run, led))
    if run.windows:
        parts.append(_html_checks(run))
    lanes = [ln for ln in LANES if any(m.lane == ln[0] for m in run.marks)]
    for i, (lane, label, color) in enumerate(lanes):
        parts.append(_html_marks(run, lane, label, CSS.get(color, color), i == len(lanes) - 1))
    if not lanes:
        parts.append('<p style="margin:0 {}px 0 0;text-align:right">time (s)</p>'.format(H_RIGHT))
    events = "\n".join("{:8.2f}  {:<14} {}".format(m.t, m.lane, m.detail or m.label)
                       for m in sorted(run.marks, key=lambda m: m.t))
    data = {"duration_s": run.duration_s, "keys": keys,
            "samples": [{k: s.get(k) for k in ["t"] + keys} for s in run.samples]}
    return ("<!doctype html>\n<html lang=en><head><meta charset=utf-8><title>{title}</title><style>{style}</style>"
            "</head><body><h1 class=\"{verdict}\">{title}</h1><p class=sub>{sub}</p><div id=readout></div>{panels}"
            "{extra}<h2>events</h2><pre>{events}</pre>"
            "<script type=\"application/json\" id=\"run-data\">{data}</script><script>{script}</script>"
            "</body></html>\n").format(
        title=_esc(run.heading), style=_STYLE, verdict=run.verdict or "", sub=_esc(run.subtitle),
        panels="".join(parts), extra=extra, events=_esc(events),
        data=json.dumps(data, separators=(",", ":")).replace("</", "<\\/"), script=_SCRIPT % (H_LEFT, H_WIDTH))


def write_html(run, path, extra=""):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html(run, extra))
    return path
