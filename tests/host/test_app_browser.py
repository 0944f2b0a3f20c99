"""The driver's app in a real browser (Playwright driving Debian's Chromium), end to end: the
OAuth 2.0 provider (npm oidc-provider, authorization code + PKCE with its login form), Mosquitto
with the shipped configuration, the bridge, the controller firmware on the virtual board, and
`v2g api` serving the app. The tests run in file order, as a driver's evening would.
Screenshots of each screen, at phone (360 px) and desktop width, go to
build/test-artifacts/app/."""

import re
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from api_helpers import ApiProc, OidcProvider, call
from bridge_helpers import ROOT, Broker, BridgeProc, Plant, free_port, make_ca, stop_all, wait_until
from ocpp.v21 import call as ocpp_call
from ocpp_csms import Csms
from vboard_fixture import RunningBoard

STATION = "CS-APP-1"
SECRET = "gateway-app-secret-for-browser-0123456789"
USERS = {"v2g-bridge": "bridge-pw", "v2g-api": "api-pw"}
SHOTS = ROOT / "build" / "test-artifacts" / "app"
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PHONE = {"width": 360, "height": 780}
DESKTOP = {"width": 1280, "height": 900}

sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: run tools/system-deps.sh (apt-get install --no-install-recommends chromium)")
    tmp = tmp_path_factory.mktemp("app")
    SHOTS.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert, ca_path = make_ca(tmp)
    cfg = tmp / "etc"
    cfg.mkdir(mode=0o750)
    (cfg / "app_jwt.secret").write_text(SECRET)
    (cfg / "mqtt_ca.pem").write_bytes(ca_path.read_bytes())
    started = []
    try:
        board = RunningBoard(tmp / "board")
        started.append(board.stop)
        broker = Broker(tmp / "broker", ca_key, ca_cert, ca_path, USERS)
        started.append(broker.stop)
        csms = Csms(heartbeat_s=5).start()
        started.append(csms.close)
        (cfg / "mqtt_password").write_text(USERS["v2g-bridge"])
        for f in ("app_jwt.secret", "mqtt_password"):
            (cfg / f).chmod(0o600)
        bridge = BridgeProc(board.endpoints["link"], csms.url, STATION, cfg, tmp / "log", tmp / "state",
                            "--mqtt", f"mqtts://v2g-bridge@127.0.0.1:{broker.port}", "--tel-batch", "1",
                            "--retry-backoff", "0.3,0.3,2")
        started.append(bridge.stop)
        api_cfg = tmp / "api-etc"
        api_cfg.mkdir(mode=0o750)
        (api_cfg / "app_jwt.secret").write_text(SECRET)
        (api_cfg / "mqtt_password").write_text(USERS["v2g-api"])
        for f in ("app_jwt.secret", "mqtt_password"):
            (api_cfg / f).chmod(0o600)
        (api_cfg / "mqtt_ca.pem").write_bytes(ca_path.read_bytes())
        port = free_port()
        oidc = OidcProvider(tmp, redirect_uris=[f"http://127.0.0.1:{port}/"], users={
            "alice": {"stations": [STATION]},
            "bob": {"stations": ["CS-BOB-1"]},
            "brief": {"stations": [STATION], "ttl": 4},     # an access token that lives 4 s
        })
        started.append(oidc.stop)
        api = ApiProc(tmp, f"mqtts://v2g-api@127.0.0.1:{broker.port}", oidc.issuer, api_cfg, port=port)
        started.append(api.stop)
        plant = Plant(board.endpoints["plant"])
        started.append(plant.close)
        # IEEE 1547 enter-service delay and ramp down to 1 s, so energy flows within the test
        kind, res = csms.request(STATION, ocpp_call.SetVariables(set_variable_data=[
            {"attribute_value": "1", "component": {"name": "V2GController"}, "variable": {"name": n}}
            for n in ("GRID_ENTER_SERVICE_DELAY_S", "GRID_RAMP_S")]))
        assert all(r["attributeStatus"] == "Accepted" for r in res["setVariableResult"]), res
        pw = sync_api.sync_playwright().start()
        started.append(pw.stop)
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        started.append(browser.close)
        yield {"api": api, "oidc": oidc, "bridge": bridge, "plant": plant, "browser": browser, "csms": csms}
    finally:
        stop_all(started)


def shot(page, name):
    """The screen at phone width and at desktop width."""
    page.set_viewport_size(PHONE)
    page.wait_for_timeout(300)          # let the charts take the new width
    page.screenshot(path=str(SHOTS / f"{name}-phone.png"), full_page=True)
    page.set_viewport_size(DESKTOP)
    page.wait_for_timeout(300)
    page.screenshot(path=str(SHOTS / f"{name}-desktop.png"), full_page=True)
    page.set_viewport_size(PHONE)


def log_in(rig, user, viewport=PHONE):
    ctx = rig["browser"].new_context(viewport=viewport)
    page = ctx.new_page()
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.on("response", lambda r: page.errors.append(f"{r.status} {r.url}")
            if r.status >= 400 and r.url.startswith(rig["api"].url) else None)
    page.goto(rig["api"].url + "/", wait_until="domcontentloaded")
    page.locator("#login-btn").wait_for(state="visible", timeout=15000)
    page.click("#login-btn")
    page.wait_for_url(re.compile(re.escape(rig["oidc"].issuer) + ".*"), wait_until="domcontentloaded", timeout=15000)
    page.fill("input[name=login]", user)
    page.fill("input[name=password]", "any password")
    page.click("button[type=submit]")
    page.wait_for_url(rig["api"].url + "/", wait_until="domcontentloaded", timeout=15000)
    return ctx, page


def app_commands(rig, op):
    """The commands of this op the bridge received from the app channel (its log)."""
    return re.findall(rf"app command {op} txn (\S+)", rig["bridge"].log_text())


def test_login_shows_the_station(rig):
    ctx, page = log_in(rig, "alice")
    rig["alice"] = (ctx, page)
    page.wait_for_function(f"document.querySelector('#st-name').textContent === '{STATION}'", timeout=20000)
    page.wait_for_function("document.querySelector('#v2g').textContent.startsWith('V2G')", timeout=20000)
    assert page.text_content("#who") == "alice"
    assert page.evaluate("!!navigator.serviceWorker") and page.evaluate(
        "fetch('/manifest.webmanifest').then(r => r.json()).then(m => m.display)") == "standalone"
    # nothing from outside: every script and style of the app comes from the API itself
    srcs = page.evaluate("[...document.querySelectorAll('script[src],link[href]')].map(e => e.src || e.href)")
    assert all(s.startswith(rig["api"].url) for s in srcs), srcs
    shot(page, "01-station-unplugged")
    assert page.errors == []


def test_a_soc_target_below_the_present_soc_starts_discharge_and_a_double_tap_sends_once(rig):
    ctx, page = rig["alice"]
    plant = rig["plant"]
    plant.do("plug")
    plant.do("ev_ready")
    page.wait_for_function("document.querySelector('#v2g').textContent === 'V2G available'", timeout=40000)
    # the SoC comes with the next telemetry sample, which may follow the status by a second
    page.wait_for_function("/^[0-9]/.test(document.querySelector('#soc').textContent)", timeout=20000)
    soc = float(page.text_content("#soc").split()[0])
    assert soc > 30, soc
    before = len(app_commands(rig, "soc_target"))
    page.locator("#t-range").fill(str(int(soc) - 20))
    # the driver leaves in three hours (the browser's local time, whole minutes)
    leave = (datetime.now().astimezone() + timedelta(hours=3)).replace(second=0, microsecond=0)
    page.locator("#t-dep").fill(leave.strftime("%Y-%m-%dT%H:%M"))
    # the station's answer is held until the taps are over: however slow the machine, they
    # all land while the first is on its way (a tap after "Done" is a new send, rightly)
    held = []
    page.route("**/soc-target", lambda route: held.append(route))
    page.locator("#t-send").dblclick()                          # a double tap
    page.locator("#t-send").click(force=True, no_wait_after=True)   # and a third, on the disabled button
    assert "pending" in page.get_attribute("#t-res", "class") and page.is_disabled("#t-send")
    page.wait_for_timeout(500)                                  # any second request would show by now
    assert len(held) == 1, [r.request.headers.get("idempotency-key") for r in held]
    held[0].continue_()
    page.unroute("**/soc-target")
    page.wait_for_function("document.querySelector('#t-res').textContent.startsWith('Done')", timeout=20000)
    page.wait_for_function("Number(document.body.dataset.lastPower) < -500", timeout=40000)
    assert "discharging" in page.text_content("#flow")
    time.sleep(1)
    assert len(app_commands(rig, "soc_target")) == before + 1     # one command for the whole double tap
    assert page.text_content("#target") == f"{int(soc) - 20} %"
    # the controller took the departure as seconds from the bridge's send (its own answer in
    # the bridge's log), and the station's status shows it back from the controller's count
    secs = int(re.findall(r"app command soc_target txn \S+ by \S+: .*departure in (\d+) s", rig["bridge"].log_text())[-1])
    assert 3 * 3600 - 120 <= secs <= 3 * 3600
    tok = page.evaluate("sessionStorage.getItem('token')")
    want = leave.astimezone(timezone.utc).isoformat()
    wait_until(lambda: call(rig["api"].url + f"/api/v1/stations/{STATION}", token=tok)[1]["departure"] == want,
               20, "the controller's departure in the station's status")
    page.wait_for_function("document.querySelector('#mode').textContent.includes('departure')", timeout=20000)
    shot(page, "02-discharging")


def test_charge_only_makes_v2g_unavailable(rig):
    ctx, page = rig["alice"]
    page.click("#co")
    page.wait_for_function("document.querySelector('#v2g').textContent === 'V2G unavailable: charge-only'",
                           timeout=20000)
    assert page.is_checked("#co")
    shot(page, "03-charge-only")
    page.click("#co")                                            # and back off
    page.wait_for_function("document.querySelector('#co-res').textContent.startsWith('Done')", timeout=20000)


def test_plug_out_shows_the_session_in_the_history(rig):
    ctx, page = rig["alice"]
    rig["plant"].do("unplug")
    page.wait_for_function("document.querySelector('#v2g').textContent === 'V2G unavailable: no vehicle plugged in'",
                           timeout=20000)
    shot(page, "04-unplugged")

    def ended():
        page.click(".tabs button[data-tab=history]")
        page.wait_for_timeout(500)
        rows = page.locator("#sessions tbody tr")
        return rows.count() >= 1 and "plugged in" not in rows.nth(0).text_content()
    wait_until(ended, 20, "a finished session in the history")
    row = [c.text_content() for c in page.locator("#sessions tbody tr").nth(0).locator("td").all()]
    assert re.fullmatch(r"[1-9]\d* Wh|\d+\.\d\d kWh", row[3]), row   # energy out
    assert float(row[6]) > 0, row                               # peak discharge, kW
    tok = page.evaluate("sessionStorage.getItem('token')")
    ses = call(rig["api"].url + f"/api/v1/stations/{STATION}/sessions", token=tok)[1]["sessions"][0]
    assert ses["energy_out_wh"] > 0 and ses["soc_min_pct"] <= ses["soc_start_pct"] and ses["end"]
    assert page.locator("#echart canvas").count() == 1
    shot(page, "05-history")
    page.click(".tabs button[data-tab=now]")


def test_a_user_cannot_see_another_users_station(rig):
    ctx, page = log_in(rig, "bob")
    try:
        page.wait_for_function("document.querySelector('#st-name').textContent === 'CS-BOB-1'", timeout=20000)
        page.wait_for_function("document.querySelector('#offline').textContent.includes('never seen')", timeout=10000)
        shot(page, "06-other-user-station-offline")
        status = page.evaluate(f"""fetch('/api/v1/stations/{STATION}', {{headers: {{Authorization:
            'Bearer ' + sessionStorage.getItem('token')}}}}).then(r => r.json().then(b => [r.status, b.code]))""")
        assert status == [403, "V2G-403"]
        listed = page.evaluate("""fetch('/api/v1/stations', {headers: {Authorization:
            'Bearer ' + sessionStorage.getItem('token')}}).then(r => r.json()).then(b => b.stations.map(s => s.station))""")
        assert listed == ["CS-BOB-1"]
    finally:
        ctx.close()


def test_an_expired_token_leads_back_to_login(rig):
    ctx, page = log_in(rig, "brief")
    try:
        page.locator("#station").wait_for(state="visible", timeout=20000)
        # the token lives 4 s (+ the API's 5 s leeway): the live stream and the next call end it
        page.locator("#login").wait_for(state="visible", timeout=30000)
        assert "V2G-401" in page.text_content("#login-why") and "log in again" in page.text_content("#login-why")
        assert page.evaluate("sessionStorage.getItem('token')") is None
        shot(page, "07-login-after-expiry")
    finally:
        ctx.close()


def test_the_interactive_api_docs_are_served_without_a_cdn(rig):
    ctx = rig["browser"].new_context(viewport=DESKTOP)
    page = ctx.new_page()
    outside = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(rig["api"].url) else None)
    try:
        page.goto(rig["api"].url + "/docs")
        page.get_by_text("/api/v1/stations/{sid}/soc-target").first.wait_for(timeout=20000)
        assert outside == []
        page.screenshot(path=str(SHOTS / "09-api-docs-desktop.png"), full_page=False)
    finally:
        ctx.close()


def test_the_network_and_the_station_going_offline_are_shown_with_the_time(rig):
    ctx, page = rig["alice"]
    ctx.set_offline(True)                                   # the phone loses its network
    page.locator("#net").wait_for(state="visible", timeout=10000)
    assert page.text_content("#net").startswith("Network offline since ")
    ctx.set_offline(False)
    page.locator("#net").wait_for(state="hidden", timeout=20000)
    rig["bridge"].stop()                                    # the gateway goes away
    page.wait_for_function("document.querySelector('#v2g').textContent === 'V2G unavailable: station offline'",
                           timeout=30000)
    assert page.text_content("#offline").startswith("Station offline since ")
    shot(page, "08-station-offline")


def test_the_api_kept_its_broker_connection(rig):
    s, doc, _ = call(rig["api"].url + "/healthz")
    assert s == 200 and doc["broker_connected"] and doc["counters"]["samples"] > 0
