"""Security extension (OCPP 1.6 Security Whitepaper): SecurityEventNotification.

Security profiles 1-3 (Basic Auth over ws/wss, client certificate) are the gateway's
connection settings, shared with 2.0.1 (host_tools.bridge.ocpp.security); the
`SecurityProfile` key reports the one in use. Events are sent while connected and
written to the central log always."""

from host_tools.bridge.ocpp.context import utcnow
from host_tools.bridge.profiles import iso


class SecurityEvents:
    def __init__(self, ctx):
        self.ctx = ctx

    async def notify(self, kind, info=None):
        self.ctx.event("INFO", f"security event {kind}" + (f": {info}" if info else ""))
        p = {"type": kind[:50], "timestamp": iso(utcnow())}
        if info:
            p["techInfo"] = str(info)[:255]
        await self.ctx.call("SecurityEventNotification", p)
