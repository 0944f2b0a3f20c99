"""Journal of applied transactions: txn id -> the original result.

Makes commands idempotent: a repeated txn gets the stored result and changes
nothing. Bounded (oldest dropped first). dump()/load() give bytes for the shell
to persist across resets; `dirty` says there is something new to write.
"""
import json

SIZE = 32


class Journal:
    def __init__(self, size=SIZE):
        self.size = size
        self._order = []
        self._res = {}
        self.dirty = False

    def __len__(self):
        return len(self._order)

    def __contains__(self, txn):
        return txn in self._res

    def get(self, txn):
        """Stored result tuple (ok, code, msg, data) or None."""
        return self._res.get(txn)

    def put(self, txn, result):
        if txn in self._res:
            return
        self._order.append(txn)
        self._res[txn] = result
        while len(self._order) > self.size:
            old = self._order.pop(0)
            del self._res[old]
        self.dirty = True

    def dump(self):
        rows = []
        for t in self._order:
            ok, code, msg, data = self._res[t]
            rows.append([t, ok, code, msg, data])
        self.dirty = False
        return json.dumps({'v': 1, 'txns': rows}).encode()

    def load(self, blob):
        """Replace the contents from dump() bytes; ValueError on bad data (nothing changes)."""
        if isinstance(blob, (bytes, bytearray, memoryview)):
            blob = bytes(blob).decode()
        obj = json.loads(blob)
        if not isinstance(obj, dict) or obj.get('v') != 1 or not isinstance(obj.get('txns'), list):
            raise ValueError('journal: not a version 1 journal')
        order = []
        res = {}
        for row in obj['txns']:
            if not isinstance(row, list) or len(row) != 5 or not isinstance(row[0], str):
                raise ValueError('journal: bad entry')
            order.append(row[0])
            res[row[0]] = (row[1], row[2], row[3], row[4])
        while len(order) > self.size:
            del res[order.pop(0)]
        self._order = order
        self._res = res
        self.dirty = False
