"""Idempotent POSTs: the Idempotency-Key header (IETF draft-ietf-httpapi-idempotency-key-header).

- Every POST needs the header (400 V2G-400 without it, or with a key that is not 1 to 255
  printable characters; a quoted sf-string `"..."` is taken without its quotes).
- A key belongs to the user who sent it (the token's `sub`): two users never share a key.
- The same key with the same request (method, path, JSON body) → the stored first response,
  nothing done again; with another request → 422 V2G-409; while the first is still being
  processed → 409 V2G-409.
- The key becomes the controller's transaction id (`k` + 32 hex digits of SHA-256 over
  user and key, so it fits the bridge's 40 characters and says nothing about the user): a
  key whose record was lost still reaches the controller as the same transaction, whose
  journal answers it without applying it again.
- Responses are kept `ttl_s` (24 h by default); a failure that changed nothing at the
  station and may succeed later (controller unreachable 503, no answer in time 504, the
  gateway refusing the API's own token 502) is not kept: the same key may be sent again.
- A reservation whose worker died is taken over after `stale_pending_s`.
"""

import hashlib
import json


class IdemError(Exception):
    def __init__(self, status, code, detail):
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


def parse_key(raw):
    if raw is None:
        raise IdemError(400, "V2G-400", "Idempotency-Key: missing (one per user action, e.g. a UUID)")
    k = raw.strip()
    if len(k) >= 2 and k[0] == k[-1] == '"':
        k = k[1:-1]
    if not 1 <= len(k) <= 255 or any(not 0x20 < ord(c) < 0x7f for c in k):
        raise IdemError(400, "V2G-400", "Idempotency-Key: must be 1 to 255 printable ASCII characters")
    return k


def fingerprint(method, path, body: bytes):
    try:
        canon = json.dumps(json.loads(body or b"null"), sort_keys=True, separators=(",", ":"))
    except ValueError:
        canon = body.decode("latin-1")
    return hashlib.sha256(f"{method} {path}\n{canon}".encode()).hexdigest()


def txn_for(user, key):
    return "k" + hashlib.sha256(f"{user}\n{key}".encode()).hexdigest()[:32]


class Keys:
    def __init__(self, store, *, ttl_s, stale_pending_s):
        self.store = store
        self.ttl_ms = int(ttl_s * 1000)
        self.stale_ms = int(stale_pending_s * 1000)
        self.counters = {"new": 0, "replayed": 0, "in_flight": 0, "mismatch": 0}

    async def run(self, user, method, path, body, raw_key, do):
        """(status, body): do(txn) -> (status, body, keep) runs once per key."""
        key = parse_key(raw_key)
        fp = fingerprint(method, path, body)
        state, stored = self.store.idem_begin(user, key, fp, self.ttl_ms, self.stale_ms)
        if state == "pending":
            self.counters["in_flight"] += 1
            raise IdemError(409, "V2G-409", "Idempotency-Key: the first request with this key is still being "
                            "processed; wait for it")
        if state == "mismatch":
            self.counters["mismatch"] += 1
            raise IdemError(422, "V2G-409", "Idempotency-Key: already used for another request; use a new key "
                            "for a new action")
        if state == "done":
            self.counters["replayed"] += 1
            status, doc = stored
            return status, {**doc, "replayed": True}
        self.counters["new"] += 1
        try:
            status, doc, keep = await do(txn_for(user, key))
        except BaseException:
            self.store.idem_forget(user, key)
            raise
        if keep:
            self.store.idem_finish(user, key, status, doc)
        else:
            self.store.idem_forget(user, key)
        return status, doc
