"""OAuth 2.0 resource server: the API checks the access tokens of the operator's OAuth 2.0 /
OpenID Connect provider.

An access token is a JWT (RFC 9068) signed by the provider. It is accepted when:
- its `alg` is in the allow-list (asymmetric only: RS256, PS256, ES256, EdDSA by default;
  never `none` or an HMAC, which would let anyone holding the public key sign);
- its `kid` names a key of the provider's JWKS. The JWKS address comes from the issuer's
  discovery document (/.well-known/openid-configuration); the keys are cached and fetched
  again when a token names an unknown `kid` (a key rotation), at most once per
  `min_refresh_s`, so a stream of made-up kids cannot hammer the provider;
- `iss` is the issuer, `aud` holds our audience, `exp` is in the future (leeway 5 s);
- then each endpoint asks for a scope (`v2g:read`, `v2g:control`, `v2g:admin`) and a station.

Which stations a user may act on comes from a claim of the token, `stations` by default (a
list of station ids, set by the provider from its user directory); `v2g:admin` reaches all.
A missing, expired or invalid token is V2G-401 (HTTP 401); a valid one without the scope or
the station is V2G-403 (HTTP 403).
"""

import json
import ssl
import threading
import time
import urllib.request

import jwt

DEFAULT_ALGORITHMS = ("RS256", "PS256", "ES256", "EdDSA")
SCOPES = ("v2g:read", "v2g:control", "v2g:admin")


class Unauthorized(Exception):
    """V2G-401: no usable token; the message says why."""


class Forbidden(Exception):
    """V2G-403: a valid token that does not grant this."""


class Principal:
    __slots__ = ("sub", "scopes", "stations", "admin", "exp", "claims")

    def __init__(self, claims, stations_claim):
        self.claims = claims
        self.sub = str(claims.get("sub") or claims.get("client_id") or "")
        raw = claims.get("scope", claims.get("scp", ""))
        self.scopes = set(raw.split() if isinstance(raw, str) else raw or ())
        st = claims.get(stations_claim, [])
        self.stations = set(st) if isinstance(st, list) and all(isinstance(x, str) for x in st) else set()
        self.admin = "v2g:admin" in self.scopes
        self.exp = claims.get("exp")

    def require(self, scope, station=None):
        if scope not in self.scopes and not self.admin:
            raise Forbidden(f"the token lacks the scope {scope}")
        if station is not None and not self.may(station):
            raise Forbidden(f"station {station} is not assigned to {self.sub}")

    def may(self, station):
        return self.admin or station in self.stations


class Jwks:
    """The provider's signing keys, by kid."""

    def __init__(self, issuer, *, ca_file=None, min_refresh_s=10.0, timeout_s=5.0):
        self.issuer = issuer.rstrip("/")
        self.ctx = ssl.create_default_context(cafile=ca_file) if ca_file else None
        self.min_refresh_s = min_refresh_s
        self.timeout_s = timeout_s
        self.jwks_uri = None
        self.keys = {}
        self.fetched = -1e9
        self.fetches = 0
        self._lock = threading.Lock()

    def _get(self, url):
        with urllib.request.urlopen(url, timeout=self.timeout_s, context=self.ctx) as r:
            return json.loads(r.read())

    def _refresh(self):
        if self.jwks_uri is None:
            meta = self._get(self.issuer + "/.well-known/openid-configuration")
            if meta.get("issuer", "").rstrip("/") != self.issuer:
                raise Unauthorized(f"the provider's discovery names issuer {meta.get('issuer')!r}, not {self.issuer!r}")
            self.jwks_uri = meta["jwks_uri"]
        doc = self._get(self.jwks_uri)
        keys = {}
        for k in doc.get("keys", []):
            if k.get("use", "sig") != "sig" or "kid" not in k:
                continue
            try:
                keys[k["kid"]] = jwt.PyJWK(k)
            except jwt.PyJWTError:
                continue          # a key type this library cannot use: tokens signed with it fail
        self.keys = keys
        self.fetched = time.monotonic()
        self.fetches += 1

    def key(self, kid):
        k = self.keys.get(kid)
        if k is not None:
            return k
        with self._lock:
            k = self.keys.get(kid)
            if k is None and time.monotonic() - self.fetched >= self.min_refresh_s:
                try:
                    self._refresh()
                except (OSError, ValueError, KeyError) as e:
                    raise Unauthorized(f"the provider's keys cannot be fetched: {type(e).__name__}") from e
                k = self.keys.get(kid)
        if k is None:
            raise Unauthorized(f"token signed with an unknown key (kid {kid!r})")
        return k


class Verifier:
    def __init__(self, issuer, audience, *, algorithms=DEFAULT_ALGORITHMS, stations_claim="stations",
                 ca_file=None, leeway_s=5.0, jwks=None):
        bad = [a for a in algorithms if a.upper().startswith("HS") or a.lower() == "none"]
        if bad:
            raise ValueError(f"algorithms {bad} are not allowed for access tokens (asymmetric only)")
        self.issuer = issuer.rstrip("/")
        self.audience = audience
        self.algorithms = list(algorithms)
        self.stations_claim = stations_claim
        self.leeway_s = leeway_s
        self.jwks = jwks or Jwks(issuer, ca_file=ca_file)
        self._seen = {}           # token -> Principal: a signature is checked once per token

    CACHE_MAX = 20000

    def cached(self, token):
        """The Principal of a token verified before and not yet expired, else None."""
        p = self._seen.get(token) if token else None
        if p is not None and p.exp is not None and time.time() > p.exp + self.leeway_s:
            self._seen.pop(token, None)
            return None
        return p

    def verify(self, token) -> Principal:
        p = self.cached(token)
        return p if p is not None else self._verify(token)

    def _verify(self, token) -> Principal:
        if not token:
            raise Unauthorized("no access token (Authorization: Bearer ...)")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as e:
            raise Unauthorized(f"the access token is not a JWT: {e}") from e
        alg = header.get("alg")
        if alg not in self.algorithms:
            raise Unauthorized(f"token algorithm {alg!r} is not allowed ({', '.join(self.algorithms)})")
        key = self.jwks.key(header.get("kid"))
        try:
            claims = jwt.decode(token, key, algorithms=[alg], audience=self.audience, issuer=[self.issuer,
                                self.issuer + "/"], leeway=self.leeway_s,
                                options={"require": ["exp", "iss", "aud", "sub"]})
        except jwt.ExpiredSignatureError as e:
            raise Unauthorized("token expired: log in again") from e
        except jwt.InvalidAudienceError as e:
            raise Unauthorized(f"token is not for this API (audience {self.audience})") from e
        except jwt.InvalidIssuerError as e:
            raise Unauthorized("token from another issuer") from e
        except jwt.MissingRequiredClaimError as e:
            raise Unauthorized(f"token lacks the {e.claim!r} claim") from e
        except jwt.InvalidSignatureError as e:
            raise Unauthorized("token signature does not verify") from e
        except (jwt.PyJWTError, ValueError, TypeError) as e:
            raise Unauthorized(f"token refused: {type(e).__name__}: {e}") from e
        p = Principal(claims, self.stations_claim)
        if len(self._seen) >= self.CACHE_MAX:
            self._seen.clear()
        self._seen[token] = p
        return p
