"""`v2g api`: the REST API of the driver's app (FastAPI), and the app itself at `/`.

Reads (status, sessions, telemetry, events, live) come from the broker and the history store;
commands go to the station's bridge over MQTT with a per-command JWT and wait for the
controller's result. Every POST is idempotent through its Idempotency-Key header
(idempotency.py). Errors carry a V2G code: {"code": "V2G-4xx", "error": ..., "detail": ...}.
"""

import asyncio
import json
import logging
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from fastapi import Depends, FastAPI, Header, Path as PathParam, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, field_validator

from host_tools.api import idempotency
from host_tools.api.auth import Forbidden, Principal, Unauthorized
from host_tools.api.troubleshoot import explain, v2g_text
from host_tools.link import soc_pct

log = logging.getLogger(__name__)
WEB = Path(__file__).with_name("web")
STATION_RE = r"^[A-Za-z0-9._:-]{1,48}$"
STALE_MS = 30_000        # a station whose status and samples are older than this is shown offline


class ApiError(Exception):
    def __init__(self, status, code, detail, **extra):
        super().__init__(detail)
        self.status, self.code, self.detail, self.extra = status, code, detail, extra


def error_body(code, detail, **extra):
    names = {"V2G-400": "bad request", "V2G-401": "unauthorized", "V2G-403": "forbidden",
             "V2G-409": "idempotency conflict", "V2G-404": "not found"}
    return {"code": code, "error": names.get(code, "refused"), "detail": detail, **extra}


# -- request bodies (unknown fields refused: a typo must not be silently ignored)

class SocTarget(BaseModel):
    model_config = ConfigDict(extra="forbid")
    soc_pct: float = Field(ge=0, le=100, description="state of charge to reach, %")
    departure: Optional[datetime] = Field(None, description="when the driver leaves (ISO 8601, with a zone)")

    @field_validator("departure")
    @classmethod
    def _zoned(cls, v):
        if v is not None and v.tzinfo is None:
            raise ValueError("needs a time zone (e.g. 2026-12-05T17:30:00+01:00)")
        return v


class ReserveMargin(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pct: float = Field(ge=0, le=100, description="reserve margin above the floor, %")


class ChargeOnly(BaseModel):
    model_config = ConfigDict(extra="forbid")
    on: bool = Field(strict=True)


class Settings:
    """What `v2g api` was started with."""

    def __init__(self, *, issuer, audience, client_id="v2g-app", command_timeout_s=10.0,
                 idem_ttl_s=24 * 3600, app_scopes="openid v2g:read v2g:control"):
        self.issuer, self.audience, self.client_id = issuer, audience, client_id
        self.command_timeout_s = command_timeout_s
        self.idem_ttl_s = idem_ttl_s
        self.app_scopes = app_scopes


def create_app(settings, verifier, broker, store, signer):
    app = FastAPI(title="v2g api", version="1", docs_url=None, redoc_url=None,
                  description="The driver's app backend: station status, SoC target, reserve margin, charge-only, "
                              "history and a live stream. OAuth 2.0 bearer tokens; POSTs need an Idempotency-Key.")
    keys = idempotency.Keys(store, ttl_s=settings.idem_ttl_s,
                            stale_pending_s=settings.command_timeout_s * 2 + 5)
    departures = {}      # station -> the departure time the driver gave with the last target

    @app.on_event("startup")
    async def _start():
        broker.start(asyncio.get_running_loop())
        app.state.purger = asyncio.create_task(purge_keys())

    async def purge_keys():
        """Idempotency keys older than their time go, once an hour (and at start)."""
        while True:
            try:
                await asyncio.to_thread(store.purge, int(time.time() * 1000) - int(settings.idem_ttl_s * 1000))
            except Exception as e:   # noqa: BLE001 - a busy store is tried again next hour
                log.warning("idempotency keys not purged: %s", e)
            await asyncio.sleep(3600)

    @app.on_event("shutdown")
    async def _stop():
        app.state.purger.cancel()
        broker.stop()

    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        headers = {"WWW-Authenticate": f'Bearer error="invalid_token", error_description="{e.detail}"'} \
            if e.status == 401 else None
        return JSONResponse(error_body(e.code, e.detail, **e.extra), status_code=e.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _bad_input(request, e: RequestValidationError):
        fields = []
        for err in e.errors():
            loc = [str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path", "header")]
            fields.append({"field": ".".join(loc) or "body", "msg": err.get("msg")})
        detail = "; ".join(f"{f['field']}: {f['msg']}" for f in fields)
        return JSONResponse(error_body("V2G-400", detail, fields=fields), status_code=422)

    bearer = HTTPBearer(auto_error=False, bearerFormat="JWT",
                        description="an access token (JWT) of the operator's OAuth 2.0 provider")

    async def principal(cred: Optional[HTTPAuthorizationCredentials] = Depends(bearer)) -> Principal:
        token = cred.credentials.strip() if cred else None
        p = verifier.cached(token)
        if p is not None:
            return p
        try:   # off the event loop: an unknown kid fetches the provider's keys
            return await asyncio.to_thread(verifier.verify, token)
        except Unauthorized as e:
            raise ApiError(401, "V2G-401", str(e)) from e

    def allow(p: Principal, scope, station=None):
        try:
            p.require(scope, station)
        except Forbidden as e:
            raise ApiError(403, "V2G-403", str(e)) from e

    Station = PathParam(pattern=STATION_RE, description="station id")

    # ------------------------------------------------------------------ reads

    def station_doc(sid):
        st = broker.status.get(sid)
        latest = store.latest_sample(sid)
        doc, seen = (st if st else ({}, None))
        t_sample, s = latest if latest else (None, {})
        last_seen = max([x for x in (seen, t_sample) if x is not None], default=None)
        now = int(time.time() * 1000)
        online = bool(doc.get("online")) and last_seen is not None and now - last_seen < STALE_MS
        gw = broker.gateway_down(doc)
        v2g = dict(doc.get("v2g") or {"available": False, "reason": "station never seen"})
        if gw is not None:
            online, v2g = False, {"available": False, "reason": "gateway offline"}
        elif doc and not online and v2g.get("available"):
            v2g = {"available": False, "reason": "no news from the station since " + _iso(last_seen)}
        v2g["text"] = v2g_text(v2g.get("available"), v2g.get("reason"))
        w = s.get("w")
        ma = s.get("ma")
        errors = doc.get("errors") if doc else s.get("errors", [])
        return {
            "station": sid, "online": online, "last_seen": _iso(last_seen),
            "offline_since": None if online else _iso(last_seen),
            "mode": doc.get("mode", s.get("mode")), "pilot": doc.get("cp", s.get("cp")),
            "soc_pct": doc.get("soc_pct"), "floor_pct": doc.get("floor_pct"), "target_pct": doc.get("target_pct"),
            # the station's word (what its controller holds) when it reports one; else the
            # time the driver gave with the last target through this API
            "departure": doc["departure"] if "departure" in doc else departures.get(sid),
            "charge_only": doc.get("charge_only"),
            "v2g": v2g,
            "discharge_capacity_wh": s.get("dis_cap_wh"),
            "power_w": w, "charge_w": max(0, w) if w is not None else None,
            "discharge_w": max(0, -w) if w is not None else None,
            "current_a": ma / 1000 if ma is not None else None,
            "charge_a": max(0, ma) / 1000 if ma is not None else None,
            "discharge_a": max(0, -ma) / 1000 if ma is not None else None,
            "grid_v": s["mv"] / 1000 if s.get("mv") is not None else None,
            "grid_hz": s["mhz"] / 1000 if s.get("mhz") is not None else None,
            "energy_in_wh": s.get("e_in_wh"), "energy_out_wh": s.get("e_out_wh"),
            "errors": [explain(c) for c in errors or []],
            "limits": doc.get("limits"), "gateway": doc.get("gateway"),
            "api": {"broker_connected": broker.connected.is_set(), "broker_offline_since": _iso(broker.offline_since)},
        }

    @app.get("/api/v1/stations", tags=["stations"], summary="The stations this user may act on")
    async def list_stations(p: Principal = Depends(principal)):
        allow(p, "v2g:read")
        ids = sorted(set(broker.status) | p.stations) if p.admin else sorted(p.stations)
        out = []
        for sid in ids:
            d = station_doc(sid)
            out.append({k: d[k] for k in ("station", "online", "last_seen", "mode", "soc_pct", "v2g")})
        return {"stations": out, "user": p.sub}

    @app.get("/api/v1/stations/{sid}", tags=["stations"], summary="One station's status")
    async def get_station(sid: str = Station, p: Principal = Depends(principal)):
        allow(p, "v2g:read", sid)
        return station_doc(sid)

    @app.get("/api/v1/stations/{sid}/sessions", tags=["history"], summary="Charging sessions, newest first")
    def sessions(sid: str = Station, limit: int = Query(50, ge=1, le=1000), p: Principal = Depends(principal)):
        allow(p, "v2g:read", sid)
        rows = store.sessions(sid, limit)
        for r in rows:
            for k in ("start", "end", "last_seen"):
                r[k] = _iso(r[k])
        return {"station": sid, "sessions": rows}

    @app.get("/api/v1/stations/{sid}/telemetry", tags=["history"],
             summary="Telemetry for a time range, downsampled to at most `points` points")
    def telemetry(sid: str = Station, from_: Optional[datetime] = Query(None, alias="from"),
                  to: Optional[datetime] = Query(None), points: int = Query(300, ge=1, le=5000),
                  p: Principal = Depends(principal)):
        allow(p, "v2g:read", sid)
        t_to = _ms(to) if to is not None else int(time.time() * 1000) + 1
        t_from = _ms(from_) if from_ is not None else t_to - 3600_000
        if t_from >= t_to:
            raise ApiError(422, "V2G-400", "from: must be before to", fields=[{"field": "from", "msg": "after to"}])
        rows = store.telemetry(sid, t_from, t_to, points)
        for r in rows:
            r["t"] = _iso(r["t"])
        return {"station": sid, "from": _iso(t_from), "to": _iso(t_to), "points": rows}

    @app.get("/api/v1/stations/{sid}/events", tags=["history"], summary="Controller events, newest first")
    def events(sid: str = Station, from_: Optional[datetime] = Query(None, alias="from"),
               to: Optional[datetime] = Query(None), limit: int = Query(100, ge=1, le=1000),
               p: Principal = Depends(principal)):
        allow(p, "v2g:read", sid)
        t_to = _ms(to) if to is not None else int(time.time() * 1000) + 1
        t_from = _ms(from_) if from_ is not None else 0
        rows = store.events(sid, t_from, t_to, limit)
        for r in rows:
            r["t"] = _iso(r["t"])
            r.update({k: v for k, v in explain(r["code"]).items() if k != "code"})
        return {"station": sid, "events": rows}

    @app.get("/api/v1/stations/{sid}/live", tags=["stations"],
             summary="Server-Sent Events: `status` on connect and on each change, `telemetry`, `event`")
    async def live(request: Request, sid: str = Station, p: Principal = Depends(principal)):
        allow(p, "v2g:read", sid)
        q = broker.watch(sid)

        async def stream():
            try:
                yield _sse("status", station_doc(sid))
                while True:
                    if p.exp is not None and time.time() > p.exp:
                        yield _sse("auth", error_body("V2G-401", "token expired: log in again"))
                        return
                    try:
                        item = await asyncio.wait_for(q.get(), 15)
                    except asyncio.TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    if item["type"] == "telemetry":
                        pts = [{"t": _iso(item["ts"] - (item["samples"][-1].get("t_ms", 0) - x.get("t_ms", 0))),
                                "w": x.get("w"), "soc_pct": soc_pct(x), "mode": x.get("mode"), "cp": x.get("cp")}
                               for x in item["samples"]]
                        yield _sse("telemetry", {"points": pts})
                    elif item["type"] == "status":
                        yield _sse("status", station_doc(sid))
                    else:
                        yield _sse("event", item["event"])
            finally:
                broker.unwatch(sid, q)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    # ------------------------------------------------------------------ commands

    async def run_command(request, sid, p, op, args, idem_key, extra_state=None):
        allow(p, "v2g:control", sid)
        body = await request.body()
        status, doc = await keys.run(p.sub, request.method, request.url.path, body, idem_key,
                                     lambda txn: send(sid, p, op, args, txn, extra_state))
        return JSONResponse(doc, status_code=status, headers={"Idempotency-Key": idem_key})

    async def send(sid, p, op, args, txn, extra_state):
        payload = {"txn": txn, "token": signer.token(p.sub, sid), "op": op, "args": args}
        res = await broker.command(sid, payload, f"{broker.client_id}|{txn}".encode(),
                                   settings.command_timeout_s)
        if res is None:
            return 504, error_body("V2G-110", "the station did not answer in time; the same Idempotency-Key "
                                   "may be sent again", txn=txn), False
        doc = {"station": sid, "op": op, "txn": txn, "ok": bool(res.get("ok")), "code": res.get("code"),
               "msg": res.get("msg"), "data": res.get("data") or {}}
        if res.get("ok"):
            if extra_state:
                extra_state()
            return 200, doc, True
        code = res.get("code")
        if code == "V2G-110":
            return 503, {**error_body(code, res.get("msg")), **doc}, False     # may be retried
        if code == "V2G-401":   # the bridge refused our command token: this API's key is wrong
            return 502, {**error_body(code, "the station's gateway refused the API's command token: "
                                      + str(res.get("msg"))), **doc}, False
        return (422 if code == "V2G-400" else 409), {**error_body(code, res.get("msg")), **doc}, True

    IdemKey = Header(None, alias="Idempotency-Key",
                     description="one per user action (e.g. a UUID); the same key and body get the first result")

    @app.post("/api/v1/stations/{sid}/soc-target", tags=["commands"], summary="Set the SoC target")
    async def soc_target(request: Request, body: SocTarget, sid: str = Station,
                         idem_key: Optional[str] = IdemKey, p: Principal = Depends(principal)):
        dep = body.departure.astimezone(timezone.utc).isoformat() if body.departure else None
        args = {"soc_pct": body.soc_pct}
        if dep is not None:
            # absolute, as the driver gave it: the bridge makes it seconds from now as it sends
            # it to the controller, which has no wall clock (and refuses one passed or > 6 days)
            args["departure"] = dep

        def remember():
            departures[sid] = dep
        return await run_command(request, sid, p, "soc_target", args, idem_key, remember)

    @app.post("/api/v1/stations/{sid}/reserve-margin", tags=["commands"], summary="Set the reserve margin")
    async def reserve_margin(request: Request, body: ReserveMargin, sid: str = Station,
                             idem_key: Optional[str] = IdemKey, p: Principal = Depends(principal)):
        return await run_command(request, sid, p, "reserve_margin", {"pct": body.pct}, idem_key)

    @app.post("/api/v1/stations/{sid}/charge-only", tags=["commands"], summary="Charge-only on or off")
    async def charge_only(request: Request, body: ChargeOnly, sid: str = Station,
                          idem_key: Optional[str] = IdemKey, p: Principal = Depends(principal)):
        return await run_command(request, sid, p, "charge_only", {"on": body.on}, idem_key)

    # ------------------------------------------------------------------ the app

    @app.get("/api/v1/config", tags=["app"], summary="What the app needs to log in (public)")
    def config():
        return {"issuer": settings.issuer, "client_id": settings.client_id, "audience": settings.audience,
                "scope": settings.app_scopes}

    @app.get("/docs", include_in_schema=False)
    def docs():
        # Swagger UI from the vendored copy (make web), never from a CDN
        return get_swagger_ui_html(openapi_url="/openapi.json", title="v2g api",
                                   swagger_js_url="/vendor/swagger-ui/swagger-ui-bundle.js",
                                   swagger_css_url="/vendor/swagger-ui/swagger-ui.css",
                                   swagger_favicon_url="/icon.svg")

    @app.get("/healthz", include_in_schema=False)
    def health():
        return {"broker_connected": broker.connected.is_set(), "counters": broker.counters}

    @app.exception_handler(idempotency.IdemError)
    async def _idem(request, e: idempotency.IdemError):
        return JSONResponse(error_body(e.code, e.detail), status_code=e.status)

    if WEB.is_dir():
        app.mount("/", StaticFiles(directory=WEB, html=True), name="app")
    return app


def _sse(event, data):
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _ms(dt):
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1000)


def _iso(ms):
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def station_id_ok(s):
    return re.match(STATION_RE, s) is not None
