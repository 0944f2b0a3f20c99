"""A Security: the station's identity and its security profile towards the CSMS."""

import asyncio
import base64
import re
import ssl
from datetime import datetime, timezone

# the OCPP identity: what may appear in the CSMS URL and in file names under the state dir
STATION_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,48}$")


def check_station_id(station_id):
    """Raise ValueError unless station_id is a usable OCPP identity."""
    if (not isinstance(station_id, str) or not STATION_ID_RE.match(station_id)
            or station_id in (".", "..")):
        raise ValueError(f"station id {station_id!r} is not a valid OCPP identity: 1 to 48 of "
                         "A-Z a-z 0-9 . _ : - (and not '.' or '..')")
    return station_id


class Security:
    """Security profile (OCPP 2.0.1 Part 2 A00): 1 ws + Basic Auth, 2 wss + Basic Auth,
    3 wss + client certificate. 0 = no security (a local test CSMS only)."""

    def __init__(self, profile, password=None, ca_file=None, cert_file=None, key_file=None):
        self.profile = profile
        self.password = password
        self.ca_file = ca_file
        self.cert_file = cert_file
        self.key_file = key_file

    def check(self, url):
        scheme = url.split(":", 1)[0].lower()
        want = "ws" if self.profile in (0, 1) else "wss"
        if scheme != want:
            raise ValueError(f"security profile {self.profile} needs a {want}:// CSMS URL, got {scheme}://")
        if self.profile in (1, 2) and not self.password:
            raise ValueError(f"security profile {self.profile} needs the Basic Auth password "
                             "(csms_password in the config directory)")
        if self.profile == 3 and not (self.cert_file and self.key_file):
            raise ValueError("security profile 3 needs client_cert.pem and client_key.pem in the config directory")

    def headers(self, station_id):
        if self.profile in (1, 2):
            tok = base64.b64encode(f"{station_id}:{self.password}".encode()).decode()
            return {"Authorization": "Basic " + tok}
        return None

    def ssl_context(self):
        if self.profile < 2:
            return None
        ctx = ssl.create_default_context(cafile=self.ca_file)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.profile == 3:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx

    def upload_schemes(self):
        """The URL schemes a log upload may use: plain http only up to profile 1."""
        return ("https",) if self.profile >= 2 else ("http", "https")


class SecurityEvents:
    """A Security: SecurityEventNotification (A04). An event raised while the CSMS is away
    waits in a bounded list and goes out once the next boot was accepted, oldest first
    (A04.FR.02: critical events are queued while offline)."""

    MAX_WAITING = 100

    def __init__(self, ctx):
        self.ctx = ctx
        self.waiting = []
        self.sent = 0
        self._lock = None

    def raise_event(self, kind, tech_info=None):
        """kind: a security event of Part 2 Appendix 1 (e.g. InvalidFirmwareSignature)."""
        now = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        ev = {"type": kind, "timestamp": now}
        if tech_info:
            ev["techInfo"] = str(tech_info)[:255]
        self.ctx.event("INFO", f"security event {kind}" + (f": {tech_info}" if tech_info else ""))
        if len(self.waiting) >= self.MAX_WAITING:
            self.waiting.pop(0)
        self.waiting.append(ev)
        self.flush()

    def flush(self):
        """Send what waits, when connected (called after each accepted boot too)."""
        if self.ctx.connected.is_set() and self.waiting:
            asyncio.ensure_future(self._deliver_once())

    async def _deliver_once(self):
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:    # one sender: an event goes out once
            await self._deliver()

    async def _deliver(self):
        while self.waiting and self.ctx.connected.is_set():
            ev = self.waiting[0]
            if await self.ctx.call("SecurityEventNotification", ev) is None:
                return    # not delivered: stays for the next session
            if self.waiting and self.waiting[0] is ev:
                self.waiting.pop(0)
                self.sent += 1
