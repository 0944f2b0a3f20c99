"""The API's access-token checks (host_tools/api/auth.py) against a JWKS served on loopback:
issuer, audience, expiry, the algorithm allow-list, the provider's key rotation (an unknown
kid fetches the keys again, at most once per interval) and scopes and stations."""

import http.server
import json
import threading
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from host_tools.api.auth import Forbidden, Principal, Unauthorized, Verifier

AUD = "https://v2g-api.test"


class Jwks:
    """A provider's discovery document and key set, with keys that can be rotated."""

    def __init__(self):
        self.keys = {}
        self.hits = 0
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path == "/.well-known/openid-configuration":
                    doc = {"issuer": outer.issuer, "jwks_uri": outer.issuer + "/jwks"}
                else:
                    outer.hits += 1
                    doc = {"keys": [json.loads(jwt.algorithms.ECAlgorithm.to_jwk(k.public_key())) | {"kid": kid}
                                    for kid, k in outer.keys.items()]}
                body = json.dumps(doc).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.issuer = f"http://127.0.0.1:{self.srv.server_address[1]}"
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def add(self, kid):
        self.keys[kid] = ec.generate_private_key(ec.SECP256R1())
        return self.keys[kid]

    def token(self, kid, **over):
        now = int(time.time())
        claims = {"iss": self.issuer, "aud": AUD, "sub": "alice", "exp": now + 300, "iat": now,
                  "scope": "v2g:read v2g:control", "stations": ["CS-1"], **over}
        claims = {k: v for k, v in claims.items() if v is not None}
        return jwt.encode(claims, self.keys[kid], algorithm="ES256", headers={"kid": kid})


@pytest.fixture
def idp():
    j = Jwks()
    j.add("k1")
    yield j
    j.srv.shutdown()


def test_a_good_token_gives_the_user_scopes_and_stations(idp):
    p = Verifier(idp.issuer, AUD).verify(idp.token("k1"))
    assert (p.sub, p.scopes, p.stations, p.admin) == ("alice", {"v2g:read", "v2g:control"}, {"CS-1"}, False)
    p.require("v2g:control", "CS-1")
    with pytest.raises(Forbidden, match="CS-2 is not assigned to alice"):
        p.require("v2g:read", "CS-2")
    with pytest.raises(Forbidden, match="lacks the scope v2g:admin"):
        p.require("v2g:admin")
    admin = Principal({"sub": "op", "scope": "v2g:read v2g:admin"}, "stations")
    admin.require("v2g:control", "CS-ANY")        # v2g:admin reaches every station and action


@pytest.mark.parametrize("over, why", [
    ({"exp": int(time.time()) - 60}, "expired"),
    ({"aud": "https://another-api"}, "not for this API"),
    ({"iss": "https://evil.example"}, "another issuer"),
    ({"sub": None}, "'sub'"),
    ({"exp": None}, "'exp'"),
])
def test_expired_foreign_or_incomplete_tokens_are_refused_naming_why(idp, over, why):
    with pytest.raises(Unauthorized, match=why):
        Verifier(idp.issuer, AUD).verify(idp.token("k1", **over))


def test_only_allowed_algorithms(idp):
    v = Verifier(idp.issuer, AUD)
    claims = jwt.decode(idp.token("k1"), options={"verify_signature": False})
    with pytest.raises(Unauthorized, match="'HS256' is not allowed"):
        v.verify(jwt.encode(claims, "a-shared-secret-of-some-length-0123", algorithm="HS256", headers={"kid": "k1"}))
    with pytest.raises(Unauthorized, match="'none' is not allowed"):
        v.verify(jwt.encode(claims, None, algorithm="none"))
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(Unauthorized):                  # RS256 allowed, but k1 is an EC key
        v.verify(jwt.encode(claims, rsa_key, algorithm="RS256", headers={"kid": "k1"}))
    with pytest.raises(ValueError, match="asymmetric only"):
        Verifier(idp.issuer, AUD, algorithms=("ES256", "HS256"))


def test_a_rotated_key_is_fetched_once_and_made_up_kids_do_not_hammer_the_provider(idp):
    v = Verifier(idp.issuer, AUD)
    v.verify(idp.token("k1"))
    v.verify(idp.token("k1"))
    assert idp.hits == 1                               # cached
    v.jwks.fetched -= v.jwks.min_refresh_s             # the interval has passed
    idp.add("k2")                                      # the provider rotates its key
    assert v.verify(idp.token("k2")).sub == "alice"
    assert idp.hits == 2                               # fetched again for the unknown kid
    for i in range(20):                                # forged tokens with made-up kids
        with pytest.raises(Unauthorized, match="unknown key"):
            v.verify(jwt.encode({"sub": "x"}, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256",
                                headers={"kid": f"nope-{i}"}))
    assert idp.hits == 2                               # within the interval: no fetch at all


def test_an_unreachable_provider_is_401_not_a_crash():
    v = Verifier("http://127.0.0.1:9", AUD)
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(Unauthorized, match="cannot be fetched"):
        v.verify(jwt.encode({"sub": "x"}, key, algorithm="ES256", headers={"kid": "k"}))
