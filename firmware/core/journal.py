"""Journal of transactions: txn id -> the original result.

Makes commands idempotent: a repeated txn gets the stored result and changes
nothing. Two bounded rings, oldest dropped first:
- applied results (ok true): these changed something, so a retry after a reset
  must still find them; dump()/load() give their bytes for the shell to persist,
  and `dirty` says there is something new to write. The ring holds at most SIZE
  entries and BUDGET bytes of JSON, so the file has a bounded size.
- refusals (ok false): they changed nothing, so they are kept in RAM only (a
  retry in the same boot gets the same refusal). A flood of bad commands neither
  writes flash nor pushes applied results out.
Each stored result is cut to ENTRY_BYTES: a longer message is shortened and data
that does not fit is left out (the first answer carried it whole).
"""
import json

SIZE = 32             # applied results kept
REFUSED_SIZE = 8      # refusals kept (RAM)
ENTRY_BYTES = 512     # JSON of one stored entry, at most
BUDGET = 8192         # JSON of the applied ring, at most (the journal file)
MSG_MAX = 200         # characters of a stored message
CUT = ' [...]'


def _bounded(txn, result):
    """(row, its JSON size): the result as stored, within ENTRY_BYTES."""
    ok, code, msg, data = result
    if isinstance(msg, str) and len(msg) > MSG_MAX:
        msg = msg[:MSG_MAX - len(CUT)] + CUT
    row = [txn, ok, code, msg, data]
    n = len(json.dumps(row))
    if n > ENTRY_BYTES:
        row[4] = {}
        n = len(json.dumps(row))
    return row, n


class _Ring:
    def __init__(self, size, budget):
        self.size = size
        self.budget = budget
        self.order = []
        self.res = {}
        self.cost = {}
        self.bytes = 0

    def put(self, row, n):
        txn = row[0]
        self.order.append(txn)
        self.res[txn] = (row[1], row[2], row[3], row[4])
        self.cost[txn] = n
        self.bytes += n
        while len(self.order) > self.size or (self.bytes > self.budget and len(self.order) > 1):
            old = self.order.pop(0)
            del self.res[old]
            self.bytes -= self.cost.pop(old)


class Journal:
    def __init__(self, size=SIZE, budget=BUDGET, refused_size=REFUSED_SIZE):
        self.size = size
        self._applied = _Ring(size, budget)
        self._refused = _Ring(refused_size, refused_size * ENTRY_BYTES)
        self.dirty = False

    def __len__(self):
        return len(self._applied.order) + len(self._refused.order)

    def __contains__(self, txn):
        return txn in self._applied.res or txn in self._refused.res

    def get(self, txn):
        """Stored result tuple (ok, code, msg, data) or None."""
        r = self._applied.res.get(txn)
        if r is None:
            r = self._refused.res.get(txn)
        return r

    def put(self, txn, result):
        if txn in self:
            return
        row, n = _bounded(txn, result)
        if result[0]:
            self._applied.put(row, n)
            self.dirty = True
        else:
            self._refused.put(row, n)

    def dump(self):
        """JSON bytes of the applied results: at most about BUDGET bytes."""
        a = self._applied
        rows = []
        for t in a.order:
            ok, code, msg, data = a.res[t]
            rows.append([t, ok, code, msg, data])
        self.dirty = False
        return json.dumps({'v': 1, 'txns': rows}).encode()

    def load(self, blob):
        """Replace the contents from dump() bytes; ValueError on bad data (nothing changes).
        Refusals a journal of older firmware kept are left out; entries are bounded as on put."""
        if isinstance(blob, (bytes, bytearray, memoryview)):
            blob = bytes(blob).decode()
        obj = json.loads(blob)
        if not isinstance(obj, dict) or obj.get('v') != 1 or not isinstance(obj.get('txns'), list):
            raise ValueError('journal: not a version 1 journal')
        for row in obj['txns']:
            if not isinstance(row, list) or len(row) != 5 or not isinstance(row[0], str):
                raise ValueError('journal: bad entry')
        ring = _Ring(self._applied.size, self._applied.budget)
        for row in obj['txns']:
            if row[1] is True and row[0] not in ring.res:
                b, n = _bounded(row[0], (row[1], row[2], row[3], row[4]))
                ring.put(b, n)
        self._applied = ring
        self._refused = _Ring(self._refused.size, self._refused.budget)
        self.dirty = False
