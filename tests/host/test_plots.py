"""The run plots shared by v2g sim and v2g bench (host_tools/plots.py): the panels each has,
labels that never overlap, check windows, and the self-contained HTML page."""

import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from host_tools import bench, plots, sim

ROOT = Path(__file__).resolve().parents[2]

# A short run with a grid disturbance, a hot EVSE and a burst of actions within a second:
# their labels would all land on one spot without packing.
BURST = """
version = 1
title = "Burst of events"
duration_s = 40
vm = "cpython"
[config]
GRID_PROFILE = "EN50549_50HZ"
NOMINAL_VOLTAGE_V = 230
[ev]
soc_pct = 60.0
[grid]
voltage_v = 230.0
frequency_hz = 50.0
[[at]]
t_s = 1
do = "plug"
[[at]]
t_s = 1.1
do = "ev_ready"
[[at]]
t_s = 1.2
do = "setpoint"
soc_target_pct = 40
txn = "p-1"
[[at]]
t_s = 10
do = "evse_temp"
c = 70
[[at]]
t_s = 10.1
do = "grid"
frequency_hz = 47.0
[[at]]
t_s = 10.2
do = "grid"
frequency_hz = 50.0
[[at]]
t_s = 10.3
do = "cp_fault"
kind = "diode"
[[at]]
t_s = 10.4
do = "cp_restore"
[[at]]
t_s = 10.5
do = "evse_temp"
c = 30
[[at]]
t_s = 39.9
do = "unplug"
"""


@pytest.fixture(scope="module")
def burst(tmp_path_factory):
    path = tmp_path_factory.mktemp("sc") / "burst.toml"
    path.write_text(BURST)
    return sim.simulate(sim.load(path), vm="cpython")


def _bench_result(fail=True):
    """A bench result over the shipped bms_loss scenario, as the bench would record it: samples
    every 0.1 s following the scenario's story, the controller's events, the actions."""
    sc = bench.load(ROOT / "scenarios" / "bench" / "bms_loss.toml")
    r = bench.Result(sc)
    for i in range(int(sc["duration_s"] * 10) + 1):
        t = i / 10
        lost = 8.5 <= t < 13
        mode = "idle" if t < 0.2 else "connected" if t < 0.5 else "charging" if t < 1.2 else \
            "paused" if lost else "discharging"
        r.samples.append({"t": t, "mode": mode, "cp": "A" if t < 0.2 else "B" if t < 0.5 else "C",
                          "amps": -16.0 if mode == "discharging" else 0.0, "limit_charge_a": 32.0,
                          "limit_discharge_a": 0.0 if lost else 16.0, "limit_discharge_src": "bms",
                          "can_request_a": -16.0 if not lost else 0.0,
                          "soc_pct": 60.0, "grid_v": 240.0, "grid_hz": 60.0, "battery_temp_c": 25.0,
                          "evse_temp_c": 25.0 + t / 10, "errors": ["V2G-130"] if lost else []})
    r.events += [{"t": 8.5, "code": "V2G-130", "on": True, "msg": "BMS silent"},
                 {"t": 13.1, "code": "V2G-130", "on": False, "msg": "BMS back"}]
    r.actions += [{"t": e["t_s"], "do": e["do"], "args": e["args"], "note": ""} for e in sc["events"]]
    r.checks = [bench.evaluate(ex, r.samples, r.events) for ex in sc["expects"]]
    if fail:
        r.checks[3] = bench.Check(r.checks[3].name, False, r.checks[3].window, "limit_discharge_a = 16.0")
    return r


def _drawn(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def _panels(fig):
    return {ax.get_gid(): ax for ax in fig.axes}


def _assert_apart(boxes):
    for i, (a_name, a) in enumerate(boxes):
        for b_name, b in boxes[i + 1:]:
            assert not a.overlaps(b), "labels {!r} and {!r} overlap".format(a_name, b_name)


# ------------------------------------------------------------------ PNG

def test_sim_figure_has_grid_and_temperature_panels(burst):
    fig = plots.figure(plots.from_sim(burst))
    panels = _panels(fig)
    assert list(panels) == ["current", "soc", "temperature", "grid_v", "grid_hz", "pilot", "mode", "led",
                            "action", "raised", "cleared"]
    assert [panels[k].get_ylabel() for k in ("temperature", "grid_v", "grid_hz", "action")] == [
        "temperature (°C)", "grid voltage (V)", "grid frequency (Hz)", "actions"]
    assert [t.get_text() for t in panels["temperature"].get_legend().get_texts()] == ["EVSE", "battery"]
    # the panels draw the simulated signals: the 47 Hz dip and the EVSE at 70 °C
    hz = panels["grid_hz"].get_lines()[0].get_ydata()
    assert min(hz) == 47.0 and max(hz) == 50.0
    evse = panels["temperature"].get_lines()[0].get_ydata()
    assert max(evse) >= 60
    assert panels["grid_v"].get_lines()[0].get_ydata()[0] == 230.0
    # one time axis, named once, at the bottom
    assert [ax.get_xlabel() for ax in fig.axes].count("time (s)") == 1 and fig.axes[-1].get_xlabel() == "time (s)"
    assert fig.axes[0].get_xlim() == (0.0, 40.0)
    assert fig._suptitle.get_text() == "Burst of events"


def test_event_labels_never_overlap(burst):
    run = plots.from_sim(burst)
    fig = plots.figure(run)
    renderer = _drawn(fig)
    labels = [t for ax in fig.axes for t in ax.texts if t.get_gid() == "mark-label"]
    assert sorted(t.get_text() for t in labels) == sorted(m.label for m in run.marks)
    assert len([m for m in run.marks if 10 <= m.t <= 10.6]) >= 6      # the burst is there
    _assert_apart([(t.get_text(), t.get_window_extent(renderer)) for t in labels])
    # and every label sits inside its lane, inside the figure
    fig_box = fig.bbox
    for t in labels:
        box, lane = t.get_window_extent(renderer), t.axes.get_window_extent(renderer)
        assert lane.y0 <= box.y0 and box.y1 <= lane.y1, t.get_text()
        assert fig_box.x0 <= box.x0 and box.x1 <= fig_box.x1, t.get_text()


def test_lane_names_and_led_labels_do_not_collide(burst):
    fig = plots.figure(plots.from_sim(burst))
    renderer = _drawn(fig)
    led = [t for t in _panels(fig)["led"].texts if t.get_gid() == "lane-label"]
    assert led, "the LED lane names its longer spans"
    _assert_apart([(t.get_text(), t.get_window_extent(renderer)) for t in led])
    names = [ax.yaxis.label for ax in fig.axes]
    _assert_apart([(n.get_text(), n.get_window_extent(renderer)) for n in names])


def test_led_names_stay_inside_their_span():
    # short stretches of a long-named pattern: named only where the name fits
    samples, t = [], 0.0
    for i in range(40):
        samples.append({"t": t, "led": "discharging" if i % 2 else "idle", "cooling": "running"})
        t += 1.0 if i % 2 else 0.1
    run = plots.Run("LED", None, "", t, samples)
    fig = plots.figure(run)
    renderer = _drawn(fig)
    ax = _panels(fig)["led"]
    spans = plots.runs(samples, "led")
    for text in [x for x in ax.texts if x.get_gid() == "lane-label"]:
        box = text.get_window_extent(renderer)
        x0 = text.get_position()[0]
        nxt = [s[0] for s in spans if s[0] > x0] + [run.duration_s]
        if text.get_position()[1] > 1:      # the LED row (cooling is the lower one)
            assert box.x1 <= ax.transData.transform((nxt[0], 0))[0], text.get_text()
    assert any(x.get_text().strip() == "running" for x in ax.texts)


def test_bench_figure_shades_the_check_windows_and_names_the_verdict():
    result = _bench_result(fail=True)
    fig = plots.figure(plots.from_bench(result))
    panels = _panels(fig)
    assert fig._suptitle.get_text() == "BMS loss — FAILED"
    checks = panels["checks"]
    names = [t.get_text() for t in checks.get_yticklabels()]
    expects = result.scenario["expects"]
    assert names == ["{}  {}".format("FAIL" if i == 3 else "pass", ex["name"]) for i, ex in enumerate(expects)]
    bars = list(checks.collections)
    assert len(bars) == len(expects)
    for c, ex in zip(bars, expects):
        (path,) = c.get_paths()
        assert (path.vertices[:, 0].min(), path.vertices[:, 0].max()) == (ex["after_s"], ex["until_s"])
    # the failed window is shaded on the signal panels too
    failed = expects[3]
    shaded = [p for p in panels["current"].patches
              if p.get_x() == failed["after_s"] and abs(p.get_width() - (failed["until_s"] - failed["after_s"])) < 1e-9]
    assert shaded
    renderer = _drawn(fig)
    _assert_apart([(t.get_text(), t.get_window_extent(renderer)) for t in checks.get_yticklabels()])
    labels = [t for ax in fig.axes for t in ax.texts if t.get_gid() == "mark-label"]
    _assert_apart([(t.get_text(), t.get_window_extent(renderer)) for t in labels])
    # the longest names, in bold when failed, and the panel names all fit on the page
    for ax in fig.axes:
        for t in [ax.yaxis.label] + ax.get_yticklabels():
            box = t.get_window_extent(renderer)
            assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1, t.get_text()


def test_pack_rows_puts_close_marks_on_separate_rows():
    marks = [plots.Mark(10 + i * 0.05, "action", "can_bad checksum") for i in range(5)]
    marks.append(plots.Mark(30, "action", "far"))
    packed = plots.pack_rows(marks, 40, 800, text_width=lambda s: 7 * len(s))
    rows = {m.t: r for m, r, _ in packed}
    assert sorted(rows[m.t] for m in marks[:5]) == [0, 1, 2, 3, 4]
    assert rows[30] == 0
    # a label near the right edge ends at its marker instead of running off
    (m, _, left), = plots.pack_rows([plots.Mark(39.9, "raised", "V2G-130")], 40, 800, text_width=len)
    assert left is False


def test_png_file_is_written(burst, tmp_path):
    png = sim.plot(burst, tmp_path / "burst.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = _bench_result(fail=False)
    assert result.plot(tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"


# ------------------------------------------------------------------ HTML

class _Page(HTMLParser):
    """The parts of a plot page the tests look at."""

    def __init__(self, text):
        super().__init__()
        self.title = self.h1 = ""
        self.h1_class = None
        self.figures = {}          # panel id -> {"caption", "ticks", "texts", "rects", "polylines", "marks"}
        self.scripts, self.links, self.data = [], [], None
        self._in, self._fig, self._tag_text = None, None, []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("title", "h1", "figcaption", "text", "script"):
            self._in, self._tag_text = (tag, a), []
        if tag == "h1":
            self.h1_class = a.get("class")
        if tag == "script":
            self.scripts.append(a)
        if "src" in a or "href" in a:
            self.links.append(a)
        if tag == "figure":
            self._fig = a["id"].removeprefix("panel-")
            self.figures[self._fig] = {"caption": "", "ticks": [], "texts": [], "rects": [], "polylines": [],
                                       "time_axis": 0}
        elif self._fig and tag == "rect":
            self.figures[self._fig]["rects"].append(a)
        elif self._fig and tag == "polyline":
            self.figures[self._fig]["polylines"].append(a)
        elif self._fig and tag == "g" and a.get("class") == "time-axis":
            self.figures[self._fig]["time_axis"] += 1

    def handle_data(self, data):
        if self._in:
            self._tag_text.append(data)

    def handle_endtag(self, tag):
        if tag == "figure":
            self._fig = None
        if not self._in or self._in[0] != tag:
            return
        text, attrs = "".join(self._tag_text), self._in[1]
        self._in = None
        if tag == "title" and not self._fig:
            self.title = text
        elif tag == "h1":
            self.h1 = text
        elif tag == "figcaption":
            self.figures[self._fig]["caption"] = text
        elif tag == "text" and self._fig:
            f = self.figures[self._fig]
            (f["ticks"] if attrs.get("class") == "tick" else f["texts"]).append((text, attrs))
        elif tag == "script" and attrs.get("id") == "run-data":
            self.data = json.loads(text)


def test_bench_html_names_scenario_and_verdict_with_time_axis_and_mode_panel(tmp_path):
    result = _bench_result(fail=True)
    page = _Page(result.plot(tmp_path / "run.html").read_text())
    assert page.title == page.h1 == "BMS loss — FAILED" and page.h1_class == "FAILED"
    assert list(page.figures) == ["current", "soc", "temperature", "grid_v", "grid_hz", "pilot", "mode", "checks",
                                  "action", "raised", "cleared"]
    # every panel has the time axis: tick labels from 0 to the run's end, increasing
    for pid, f in page.figures.items():
        assert f["time_axis"] == 1, pid
        ticks = [float(t) for t, _ in f["ticks"]]
        assert ticks[0] == 0 and ticks[-1] == result.scenario["duration_s"] and ticks == sorted(ticks), pid
        xs = [float(a["x"]) for _, a in f["ticks"]]
        assert xs == sorted(xs)
    assert any(t == "time (s)" for t, _ in page.figures["cleared"]["texts"])
    # the mode panel: one band per stretch of a mode, in the order the controller went through them
    bands = [r["data-mode"] for r in page.figures["mode"]["rects"] if r.get("class") == "mode-band"]
    assert bands == [v for _, _, v in plots.runs(result.samples, "mode")]
    assert [t for t, _ in page.figures["mode"]["texts"]] == list(plots.MODES)
    # the check windows, the failed one marked
    windows = [r for r in page.figures["checks"]["rects"] if r.get("class") == "check-window"]
    assert [w["data-ok"] for w in windows] == ["pass", "pass", "pass", "FAIL", "pass", "pass"]
    # the grid and temperature panels draw their signals
    assert {p["data-key"] for p in page.figures["temperature"]["polylines"]} == {"evse_temp_c", "battery_temp_c"}
    assert {p["data-key"] for p in page.figures["grid_hz"]["polylines"]} == {"grid_hz"}
    # self-contained: nothing loaded from elsewhere
    assert page.links == [] and all("src" not in s for s in page.scripts)
    assert page.data["duration_s"] == 20.0 and len(page.data["samples"]) == len(result.samples)


def test_html_mark_labels_never_overlap(burst, tmp_path):
    page = _Page(sim.plot(burst, tmp_path / "burst.html").read_text())
    assert page.title == "Burst of events"
    for lane in ("action", "raised", "cleared"):
        boxes = []
        for text, a in page.figures[lane]["texts"]:
            if "mark-label" not in a.get("class", ""):
                continue
            x, w = float(a["x"]), len(text) * plots.H_CHAR
            x0 = x if a["text-anchor"] == "start" else x - w
            boxes.append((text, float(a["y"]), x0, x0 + w))
        assert boxes or lane != "action"
        for i, (n1, y1, a1, b1) in enumerate(boxes):
            assert plots.H_LEFT <= a1 and b1 <= plots.H_LEFT + plots.H_WIDTH + plots.H_RIGHT, n1
            for n2, y2, a2, b2 in boxes[i + 1:]:
                assert y1 != y2 or b1 <= a2 or b2 <= a1, "{!r} and {!r} overlap".format(n1, n2)


def test_cli_writes_the_html_plot(tmp_path):
    sc = tmp_path / "burst.toml"
    sc.write_text(BURST)
    out = tmp_path / "plot.html"
    proc = subprocess.run([sys.executable, "-m", "host_tools.commands.sim", str(sc), "--vm", "cpython",
                           "--out", str(tmp_path / "t.jsonl"), "--plot", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    page = _Page(out.read_text())
    assert page.title == "Burst of events" and "mode" in page.figures


def test_html_cursor_reads_out_the_signals_at_the_pointer(tmp_path):
    # the page's script run in Node against a stand-in for the browser's DOM: a pointer at
    # the middle of a panel moves every cursor there and reads out the sample in force
    import re
    import shutil

    node = shutil.which("node")
    if not node:
        pytest.skip("Node.js is not installed")
    result = _bench_result(fail=True)
    page = result.plot(tmp_path / "run.html").read_text()
    data = re.search(r'<script type="application/json" id="run-data">(.*?)</script>', page, re.S).group(1)
    script = re.findall(r"<script>(.*?)</script>", page, re.S)[-1]
    harness = """
var data = %s, handlers = [], cursors = [{a: {}}, {a: {}}], out = {textContent: ''};
var svg = {getBoundingClientRect: function () { return {left: 0}; },
           addEventListener: function (k, f) { handlers.push(f); }};
cursors.forEach(function (c) { c.setAttribute = function (k, v) { c.a[k] = v; }; });
var document = {
  getElementById: function (id) { return id === 'run-data' ? {textContent: data} : out; },
  querySelectorAll: function (q) { return q === 'line.cursor' ? cursors : [svg]; }
};
%s
handlers[0]({clientX: %r});
console.log(JSON.stringify({readout: out.textContent, cursors: cursors.map(function (c) { return c.a; })}));
""" % (json.dumps(data), script, plots.H_LEFT + plots.H_WIDTH / 2)
    (tmp_path / "h.js").write_text(harness)
    proc = subprocess.run([node, str(tmp_path / "h.js")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["readout"].startswith("t = 10.00 s")
    assert "mode paused" in got["readout"] and "limit_discharge_a 0" in got["readout"]
    x = plots.H_LEFT + plots.H_WIDTH / 2
    assert got["cursors"] == [{"x1": x, "x2": x, "visibility": "visible"}] * 2
