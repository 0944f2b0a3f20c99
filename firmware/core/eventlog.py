"""Event log: a bounded ring of (t_ms, code, on, msg), oldest overwritten.

Slots are preallocated; append() stores references only, so the control step may
log a state change with a constant message without allocating. Each entry also
keeps the boot count in force when it was appended (`boot`, set by the shell):
t_ms restarts at every boot, so (boot, t_ms) is what orders entries across resets.
dump()/load() give bytes for the shell to persist; `dirty` says there is something
new to write. A log written before entries carried the boot loads with boot 0
(unknown).

Bounded in bytes as well as in entries, so the file fits the smallest board's flash
whatever is logged: a message longer than TEXT_MAX characters is shortened (the
control step's own messages are shorter and pass without a copy), and the oldest
entries give way while the messages kept exceed BUDGET (about BUDGET + SIZE x ROW
bytes of JSON; dump() holds the file to MAX_FILE whatever the text's escapes).
"""
import json

SIZE = 64
TEXT_MAX = 160        # characters of one message
ROW = 40              # JSON of an entry besides its message: [t_ms, "V2G-xxx", true, "", boot]
BUDGET = 6144         # characters of the messages kept
MAX_FILE = 9216       # bytes of dump(), at most
CUT = ' [...]'


class EventLog:
    def __init__(self, size=SIZE):
        self.size = size
        self._t = [0] * size
        self._code = [''] * size
        self._on = bytearray(size)     # 1 = raised (a list of bools: four times the RAM)
        self._msg = [''] * size
        self._boot = [0] * size
        self.boot = 0       # boot count stamped on new entries (0 = unknown)
        self._head = 0      # next slot to write
        self._count = 0
        self.total = 0      # events ever appended (survives load)
        self.dirty = False
        self._chars = 0     # characters of the messages kept

    def __len__(self):
        return self._count

    def append(self, t_ms, code, on, msg, boot=-1):
        if len(msg) > TEXT_MAX:
            msg = msg[:TEXT_MAX - len(CUT)] + CUT
        if self._count == self.size:
            self._drop_oldest()     # its slot is the one written now
        while self._count and self._chars + len(msg) > BUDGET:
            self._drop_oldest()
        self._chars += len(msg)
        i = self._head
        self._t[i] = t_ms
        self._code[i] = code
        self._on[i] = 1 if on else 0
        self._msg[i] = msg
        self._boot[i] = self.boot if boot < 0 else boot
        i += 1
        if i == self.size:
            i = 0
        self._head = i
        self._count += 1
        self.total += 1
        self.dirty = True

    def _oldest(self):
        i = self._head - self._count
        return i + self.size if i < 0 else i

    def _drop_oldest(self):
        i = self._oldest()
        self._chars -= len(self._msg[i])
        self._msg[i] = ''
        self._count -= 1

    def amend(self, t_ms, code, old_msg, new_msg):
        """Give the newest entry with this time, code and message a fuller message (the shell
        adds what it alone knows, e.g. why the meter went stale). False if none matches."""
        i = self._head
        for _ in range(self._count):
            i -= 1
            if i < 0:
                i = self.size - 1
            if self._t[i] == t_ms and self._code[i] == code and self._msg[i] == old_msg:
                if len(new_msg) > TEXT_MAX:
                    new_msg = new_msg[:TEXT_MAX - len(CUT)] + CUT
                self._chars += len(new_msg) - len(old_msg)
                self._msg[i] = new_msg
                self.dirty = True
                return True
        return False

    def entries(self):
        """Oldest first, list of (t_ms, code, on, msg)."""
        return [r[:4] for r in self.rows()]

    def rows(self):
        """Oldest first, list of (t_ms, code, on, msg, boot)."""
        out = []
        start = self._head - self._count
        if start < 0:
            start += self.size
        for k in range(self._count):
            i = (start + k) % self.size
            out.append((self._t[i], self._code[i], self._on[i] == 1, self._msg[i], self._boot[i]))
        return out

    def dump(self):
        rows = [json.dumps(list(r)) for r in self.rows()]
        # the messages' escapes (quotes, control characters) can make JSON longer than its
        # characters: the oldest give way until the file fits MAX_FILE
        size = 40 + sum(len(r) + 1 for r in rows)
        k = 0
        while size > MAX_FILE and k < len(rows) - 1:
            size -= len(rows[k]) + 1
            self._drop_oldest()
            k += 1
        self.dirty = False
        return ('{"v": 1, "total": %d, "events": [%s]}' % (self.total, ', '.join(rows[k:]))).encode()

    def load(self, blob):
        """Replace the contents from dump() bytes; ValueError on bad data (nothing changes)."""
        if isinstance(blob, (bytes, bytearray, memoryview)):
            blob = bytes(blob).decode()
        obj = json.loads(blob)
        if not isinstance(obj, dict) or obj.get('v') != 1 or not isinstance(obj.get('events'), list):
            raise ValueError('eventlog: not a version 1 log')
        rows = obj['events']
        for r in rows:
            # 4 items: written before entries carried the boot count
            if not isinstance(r, list) or len(r) not in (4, 5):
                raise ValueError('eventlog: bad entry')
            if len(r) == 5 and (not isinstance(r[4], int) or isinstance(r[4], bool) or r[4] < 0):
                raise ValueError('eventlog: bad boot count')
        rows = rows[-self.size:]
        for r in rows:
            if not isinstance(r[3], str):
                raise ValueError('eventlog: message is not text')
        self._head = 0
        self._count = 0
        self._chars = 0
        for r in rows:
            self.append(r[0], r[1], r[2], r[3], r[4] if len(r) == 5 else 0)
        self.total = obj.get('total', len(rows))
        self.dirty = False
