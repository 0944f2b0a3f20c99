"""`v2g api` under load, on loopback: the real API process, a real Mosquitto (the shipped TLS
configuration), a real OAuth 2.0 provider (npm oidc-provider, client credentials), and 1,000
stations played by one MQTT client on the bridge's account that checks each command's token
as the bridge does and answers at once with the correlation data.

- command: HTTP POST (Idempotency-Key, bearer token) -> MQTT command -> the station's result
  -> HTTP response, paced round-robin over the 1,000 stations. Goal: p99 < 100 ms (the field
  manual's packet latency).
- status reads: 1,000 concurrent HTTP clients each reading its station's status, bounded in
  count and time; reads per second and p99.
- telemetry ingest: the stations publish batches of samples (QoS 1) as fast as the publisher
  can; samples stored per second by the API (broker -> API -> SQLite, WAL), sustained.

What it leaves out: the bridge and the controllers (their own figures are in bench/bridge.py),
TLS between the app and the API (a proxy's job), the provider in the request path (tokens are
checked against the cached JWKS). The load generator shares the machine's 2 cores with the API
and the broker, so the read figures are a floor, not a ceiling.
"""

import asyncio
import json
import os
import shutil
import ssl
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "host"))

N_STATIONS = 1000
GOAL_P99_MS = 100.0
SECRET = "bench-gateway-app-secret-0123456789"


def _pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p / 100))] if xs else float("nan")


class Fleet:
    def __init__(self, port, ca, n):
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        from host_tools.api.broker import no_delay
        from host_tools.bridge.auth import AuthError, TokenVerifier
        self.ids = [f"CS-{i:04d}" for i in range(n)]
        self.verifiers = {s: TokenVerifier(SECRET, "HS256", s) for s in self.ids}
        self.answered = 0
        self.refused = 0
        self.batches = 0                         # telemetry batches sent so far (each one new)
        self.t_base = int(time.time() * 1000) - 24 * 3600_000
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="v2g-bridge", protocol=mqtt.MQTTv5)
        c.username_pw_set("v2g-bridge", "bridge-pw")
        c.tls_set_context(ssl.create_default_context(cafile=str(ca)))
        c.max_inflight_messages_set(1000)
        c.max_queued_messages_set(0)

        def on(cl, ud, m):
            st = m.topic.split("/")[1]
            cmd = json.loads(m.payload)
            try:
                self.verifiers[st].verify(cmd.get("token"))
                res = {"txn": cmd["txn"], "ok": True, "code": None, "msg": "done", "data": cmd["args"]}
                self.answered += 1
            except AuthError as e:
                self.refused += 1
                res = {"txn": cmd.get("txn"), "ok": False, "code": "V2G-401", "msg": str(e), "data": {}}
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = m.properties.CorrelationData
            cl.publish(f"v2g/{st}/cmd/result", json.dumps(res), qos=1, properties=props)
        c.on_message = on
        up = threading.Event()

        def connected(cl, *a):
            no_delay(cl)          # as the bridge does
            up.set()
        c.on_connect = connected
        c.connect("127.0.0.1", port)
        c.loop_start()
        assert up.wait(10)
        c.subscribe("v2g/+/cmd", qos=1)
        self.c = c
        for s in self.ids:
            doc = {"station": s, "online": True, "mode": "charging", "cp": "C", "soc_pct": 55.0, "power_w": 3680,
                   "errors": [], "v2g": {"available": True, "reason": None}, "target_pct": 80.0,
                   "floor_pct": 20.0, "charge_only": False, "stopped": False, "operative": True, "limits": None,
                   "gateway": None}
            c.publish(f"v2g/{s}/status", json.dumps(doc), qos=1, retain=True)

    def telemetry(self, total_samples, per_batch):
        base = self.t_base
        sent, i = 0, self.batches
        while sent < total_samples:
            s = self.ids[i % len(self.ids)]
            k = i // len(self.ids)
            samples = [{"t_ms": (k * per_batch + j) * 1000, "cp": "C", "mode": "charging", "soc_pm": 500,
                        "w": 3000, "ma": 13000, "mv": 230000, "mhz": 50000, "e_in_wh": k * per_batch + j,
                        "e_out_wh": 0, "dis_cap_wh": 5000, "errors": []} for j in range(per_batch)]
            info = self.c.publish(f"v2g/{s}/telemetry", json.dumps(
                {"station": s, "ts": base + (k * per_batch + per_batch - 1) * 1000, "samples": samples}), qos=1)
            if info.rc != 0:
                time.sleep(0.01)
                continue
            sent += per_batch
            i += 1
        self.batches = i
        return sent

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


async def _commands(base, token, ids, rate, count):
    import httpx
    lat, codes = [], {}
    async with httpx.AsyncClient(base_url=base, timeout=10, limits=httpx.Limits(max_connections=200)) as cl:
        async def one(i):
            sid = ids[i % len(ids)]
            t0 = time.perf_counter()
            try:
                r = await cl.post(f"/api/v1/stations/{sid}/charge-only", json={"on": bool(i % 2)},
                              headers={"Authorization": "Bearer " + token, "Idempotency-Key": str(uuid.uuid4())})
            except httpx.HTTPError as e:
                codes[type(e).__name__] = codes.get(type(e).__name__, 0) + 1
                return
            lat.append((time.perf_counter() - t0) * 1000)
            codes[r.status_code] = codes.get(r.status_code, 0) + 1
        tasks = []
        start = time.perf_counter()
        for i in range(count):
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    return lat, codes


async def _get(reader, writer, host, path, token):
    """One HTTP/1.1 GET on a kept-alive connection; (status, body)."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return status, await reader.readexactly(length)


async def _reads(base, token, ids, clients, per_client, max_s):
    """`clients` connections at once, each reading its station's status `per_client` times
    (a plain HTTP/1.1 keep-alive client: a pooled client library costs more CPU per request
    than the API on this machine and would measure itself)."""
    host, port = base.split("//")[1].split(":")
    lat, errors = [], 0
    end = time.perf_counter() + max_s

    async def client(i):
        nonlocal errors
        sid = ids[i % len(ids)]
        try:
            reader, writer = await asyncio.open_connection(host, int(port))
        except OSError:
            errors += per_client
            return
        try:
            for _ in range(per_client):
                if time.perf_counter() > end:
                    return
                t0 = time.perf_counter()
                status, _ = await _get(reader, writer, f"{host}:{port}", f"/api/v1/stations/{sid}", token)
                lat.append((time.perf_counter() - t0) * 1000)
                if status != 200:
                    errors += 1
        except (OSError, asyncio.IncompleteReadError):
            errors += 1
        finally:
            writer.close()
    t0 = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    return lat, errors, time.perf_counter() - t0


def _ingest(api, fleet, before, rounds, per_round, per_batch):
    """Rounds of `per_round` samples (batches of `per_batch`), each published at once and
    waited for before the next, so the broker's queue for the API (max_queued_messages) never
    overflows: the API's sustained capacity, not the broker's drop policy."""
    from api_helpers import call
    t0 = time.perf_counter()
    want = 0
    stored = 0
    for _ in range(rounds):
        want += fleet.telemetry(per_round, per_batch)
        end = time.monotonic() + 60
        while time.monotonic() < end:
            stored = call(api.url + "/healthz")[1]["counters"]["stored_new"] - before
            if stored >= want:
                break
            time.sleep(0.02)
        if stored < want:
            break
    return stored, want, time.perf_counter() - t0


def measure():
    from api_helpers import ApiProc, OidcProvider, call
    from bridge_helpers import Broker, make_ca
    tmp = Path(tempfile.mkdtemp(prefix="bench-api-"))
    stops = []
    try:
        ca_key, ca_cert, ca_path = make_ca(tmp)
        broker = Broker(tmp / "broker", ca_key, ca_cert, ca_path, {"v2g-bridge": "bridge-pw", "v2g-api": "api-pw"})
        stops.append(broker.stop)
        pw = "bench-client-secret-0123456789-0123456789"
        oidc = OidcProvider(tmp, clients=[{"client_id": "fleet-app", "client_secret": pw,
                                           "scope": "v2g:read v2g:control v2g:admin", "stations": []}])
        stops.append(oidc.stop)
        fleet = Fleet(broker.port, ca_path, N_STATIONS)
        stops.append(fleet.close)
        cfg = tmp / "etc"
        cfg.mkdir(mode=0o750)
        (cfg / "app_jwt.secret").write_text(SECRET)
        (cfg / "mqtt_password").write_text("api-pw")
        for f in ("app_jwt.secret", "mqtt_password"):
            (cfg / f).chmod(0o600)
        (cfg / "mqtt_ca.pem").write_bytes(ca_path.read_bytes())
        api = ApiProc(tmp, f"mqtts://v2g-api@127.0.0.1:{broker.port}", oidc.issuer, cfg)
        stops.append(api.stop)
        token = oidc.token("fleet-app", "v2g:read v2g:control v2g:admin")
        end = time.monotonic() + 30
        while time.monotonic() < end and len(call(api.url + "/api/v1/stations", token=token)[1]["stations"]) < N_STATIONS:
            time.sleep(0.2)
        out = {}
        asyncio.run(_commands(api.url, token, fleet.ids, 20, 40))                  # warm-up
        print("bench api: commands", file=sys.stderr)
        out["cmd"] = asyncio.run(_commands(api.url, token, fleet.ids, 50, 1000))  # 20 s at 50/s
        print("bench api: commands done:", out["cmd"][1], "; status reads", file=sys.stderr)
        out["reads"] = asyncio.run(_reads(api.url, token, fleet.ids, 1000, 10, 60))
        print("bench api: reads done; ingest", file=sys.stderr)
        before = call(api.url + "/healthz")[1]["counters"]["stored_new"]
        out["ingest"] = _ingest(api, fleet, before, rounds=20, per_round=5000, per_batch=10)
        out["db_bytes"] = api.store.stat().st_size if Path(api.store).exists() else 0
        return out
    finally:
        for s in reversed(stops):
            try:
                s()
            except Exception as e:   # keep stopping the rest
                print("cleanup:", e)
        shutil.rmtree(tmp, ignore_errors=True)


def rows():
    r = measure()
    lat, codes = r["cmd"]
    p50, p99 = _pct(lat, 50), _pct(lat, 99)
    ok = codes.get(200, 0)
    tag = f"{N_STATIONS} stations on one broker, 50 commands/s round-robin"
    out = [
        (f"command -> controller result -> HTTP response p50, {tag}", round(p50, 1), "ms", "", None),
        (f"command -> controller result -> HTTP response p99, {tag}", round(p99, 1), "ms",
         f"< {GOAL_P99_MS:g} ms, all 200", p99 < GOAL_P99_MS and ok == len(lat)),
        ("commands answered 200", f"{ok}/{len(lat)}", "", "all", ok == len(lat)),
    ]
    rl, errors, took = r["reads"]
    out += [
        ("status reads per s, 1,000 concurrent clients (10 reads each)", round(len(rl) / took), "req/s",
         "informational", None),
        ("status read p99, 1,000 concurrent clients", round(_pct(rl, 99), 1), "ms", "informational", None),
        ("status reads failed", errors, "", "0", errors == 0),
    ]
    stored, want, t = r["ingest"]
    out.append(("telemetry ingest: samples stored per s, sustained (1,000 stations, 10 per batch, QoS 1, "
                "SQLite WAL)", round(stored / t), "samples/s", f"informational; all {want:,} stored",
                stored == want))
    return out


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    for row in rows():
        print(row)
