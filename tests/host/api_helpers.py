"""Shared pieces of the API and app tests: the OAuth 2.0 provider (npm oidc-provider on
loopback), `v2g api` as a subprocess, and tokens by client credentials."""

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from bridge_helpers import ROOT, free_port

AUDIENCE = "https://v2g-api.test"


class OidcProvider:
    def __init__(self, tmp, *, users=None, clients=None, redirect_uris=("http://127.0.0.1/",),
                 app_client_id="v2g-app"):
        self.port = free_port()
        self.clients = {c["client_id"]: c for c in clients or []}
        cfg = {"port": self.port, "audience": AUDIENCE, "app_client_id": app_client_id,
               "redirect_uris": list(redirect_uris), "users": users or {}, "clients": clients or []}
        self.log = open(Path(tmp) / "oidc.log", "w")
        self.proc = subprocess.Popen(["node", str(ROOT / "tests" / "host" / "oidc" / "provider.mjs")],
                                     stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=ROOT,
                                     env=dict(os.environ, OIDC_TEST_CONFIG=json.dumps(cfg)))
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("oidc-provider did not start: " + (Path(tmp) / "oidc.log").read_text())
        self.issuer = json.loads(line)["issuer"]

    def token(self, client_id, scope="v2g:read v2g:control"):
        """An access token (JWT) by the client-credentials grant."""
        c = self.clients[client_id]
        data = urllib.parse.urlencode({"grant_type": "client_credentials", "scope": scope,
                                       "resource": AUDIENCE}).encode()
        basic = base64.b64encode(f"{client_id}:{c['client_secret']}".encode()).decode()
        req = urllib.request.Request(self.issuer + "/token", data=data,
                                     headers={"Authorization": "Basic " + basic})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())["access_token"]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.log.close()


class ApiProc:
    def __init__(self, tmp, mqtt_url, issuer, config_dir, *extra, store=None, client_id="v2g-app", port=None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        tmp = Path(tmp)
        self.store = store or tmp / "api.db"
        self.err = open(tmp / f"api-{self.port}.log", "w")
        self.args = [str(Path(sys.executable).with_name("v2g")), "api", "--listen", f"127.0.0.1:{self.port}",
                     "--mqtt", mqtt_url, "--issuer", issuer, "--audience", AUDIENCE,
                     "--store", f"sqlite:///{self.store}", "--config-dir", str(config_dir),
                     "--client-id", client_id, *extra]
        self.proc = subprocess.Popen(self.args, stdout=self.err, stderr=subprocess.STDOUT, cwd=ROOT)
        end = time.monotonic() + 20
        while time.monotonic() < end:
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as r:
                    if json.loads(r.read())["broker_connected"]:
                        return
            except (OSError, ValueError):
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("v2g api did not start: " + (tmp / f"api-{self.port}.log").read_text())

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.err.close()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def call(url, method="GET", body=None, token=None, key=None, headers=None):
    """(status, parsed JSON body, response headers) of one HTTP request."""
    h = dict(headers or {})
    if token is not None:
        h["Authorization"] = "Bearer " + token
    if key is not None:
        h["Idempotency-Key"] = key
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        h["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null"), r.headers
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = raw.decode(errors="replace")
        return e.code, doc, e.headers


def api_acl_block(user):
    """The shipped ACL's block for `v2g api`, for another worker's account."""
    lines, on = [], False
    for line in (ROOT / "deploy" / "mosquitto" / "v2g.acl").read_text().splitlines():
        if line == "user v2g-api":
            on = True
        elif on and not line.startswith("topic "):
            break
        if on:
            lines.append(line.replace("user v2g-api", f"user {user}"))
    assert lines, "the shipped ACL lost its v2g-api block"
    return "\n" + "\n".join(lines) + "\n"
