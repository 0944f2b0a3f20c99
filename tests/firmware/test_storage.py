"""Atomic storage, on both interpreters (each runs in its own scratch folder)."""
import os

from app import storage
from fwtest import raises, scratch

# Both interpreters have /tmp (the VM's is in memory); one folder per interpreter (and process).
TMP = scratch('storage')


def _fresh():
    try:
        for name in os.listdir(TMP):
            os.remove(TMP + '/' + name)
    except OSError:
        os.mkdir(TMP)
    return TMP + '/f.json'


def test_write_then_read_back():
    path = _fresh()
    storage.write_json(path, {'a': 1, 'b': [1, 2]})
    assert storage.read_json(path) == {'a': 1, 'b': [1, 2]}
    assert 'f.json.tmp' not in os.listdir(TMP)


def test_replace_keeps_only_new_content():
    path = _fresh()
    storage.write_json(path, {'v': 1})
    storage.write_json(path, {'v': 2})
    assert storage.read_json(path) == {'v': 2}


def test_leftover_tmp_from_a_reset_is_ignored():
    path = _fresh()
    storage.write_json(path, {'v': 'old'})
    with open(path + '.tmp', 'w') as f:
        f.write('{"v": "ha')   # a write cut by a reset
    assert storage.read_json(path) == {'v': 'old'}
    storage.write_json(path, {'v': 'new'})
    assert storage.read_json(path) == {'v': 'new'}


def test_missing_or_corrupt_gives_default():
    path = _fresh()
    assert storage.read_json(path, 'dflt') == 'dflt'
    with open(path, 'w') as f:
        f.write('not json')
    assert storage.read_json(path, 'dflt') == 'dflt'


def test_write_into_missing_folder_raises():
    raises(OSError, storage.write_json, 'no_such_dir_xyz/f.json', {})


class _FatOs:
    """os whose rename refuses an existing target, as a FAT without replace would; it can
    stop after the remove (a reset between the two steps)."""

    def __init__(self, cut_after_remove=False):
        self.cut = cut_after_remove
        self.calls = []

    def stat(self, p):
        return os.stat(p)

    def mkdir(self, p):
        return os.mkdir(p)

    def remove(self, p):
        self.calls.append('remove')
        os.remove(p)
        if self.cut:
            raise KeyboardInterrupt('power cut')

    def rename(self, a, b):
        self.calls.append('rename')
        try:
            os.stat(b)
            raise OSError(17)     # EEXIST
        except OSError as e:
            if e.args and e.args[0] == 17:
                raise
        os.rename(a, b)


def test_replace_where_rename_refuses_an_existing_target():
    path = _fresh()
    storage.write_json(path, {'v': 1})
    saved = storage.os
    storage.os = _FatOs()
    try:
        storage.write_json(path, {'v': 2})
        assert storage.os.calls == ['rename', 'remove', 'rename']
    finally:
        storage.os = saved
    assert storage.read_json(path) == {'v': 2} and 'f.json.tmp' not in os.listdir(TMP)


def test_reset_between_remove_and_rename_is_recovered_on_read():
    path = _fresh()
    storage.write_json(path, {'v': 1})
    saved = storage.os
    storage.os = _FatOs(cut_after_remove=True)
    try:
        raises(KeyboardInterrupt, storage.write_json, path, {'v': 2})
    finally:
        storage.os = saved
    assert sorted(os.listdir(TMP)) == ['f.json.tmp']          # only the new content is left
    assert storage.read_json(path) == {'v': 2}
    assert sorted(os.listdir(TMP)) == ['f.json']              # renamed into place
    # a .tmp torn mid-write beside no NAME (the very first write cut) is not taken
    os.remove(path)
    with open(path + '.tmp', 'w') as f:
        f.write('{"v": 3')
    assert storage.read_json(path, 'dflt') == 'dflt' and sorted(os.listdir(TMP)) == ['f.json.tmp']


# -- sealed copies --------------------------------------------------------------------------

def test_a_sealed_copy_tells_every_kind_of_damage():
    blob = storage.seal(b'{"count": 41}', 7)
    assert storage.unseal(blob) == (7, b'{"count": 41}')
    cases = {
        'empty': b'',
        'cut short': blob[:len(blob) - 12],
        'cut in the body': blob[:8],
        'a digit changed': blob.replace(b'41', b'42'),         # same length: the CRC tells
        'the sequence changed': blob.replace(b'check 7 ', b'check 9 '),
        'garbled': blob[:3] + b'\xff\xfe' + blob[5:],
    }
    for what, bad in cases.items():
        e = raises(ValueError, storage.unseal, bad)
        assert str(e), what


def test_copies_take_the_newest_whole_one_and_name_the_damage():
    path = _fresh()
    storage.write_copies(path, b'old', 1)
    storage.write_copies(path, b'new', 2)
    got = storage.read_copies(path)
    assert (got.body, got.seq, got.damage, got.repair) == (b'new', 2, [], False)
    # a reset between the two writes: one new, one old, both whole: no damage
    storage.write_atomic(path, storage.seal(b'newer', 3))
    got = storage.read_copies(path)
    assert (got.body, got.seq, got.damage, got.repair) == (b'newer', 3, [], True)
    # the primary garbled: the backup is taken and the primary named
    with open(path, 'wb') as f:
        f.write(b'\x00garbage')
    got = storage.read_copies(path)
    assert got.body == b'new' and got.repair and len(got.damage) == 1 and got.damage[0].startswith(path + ':')
    # a whole .tmp where the file was removed (FAT) is the file; a torn one is nothing
    os.remove(path)
    storage.write_atomic(path + '.bak', storage.seal(b'x', 4))
    with open(path + '.tmp', 'wb') as f:
        f.write(storage.seal(b'from tmp', 5))
    got = storage.read_copies(path)
    assert (got.body, got.damage) == (b'from tmp', [])
    with open(path + '.tmp', 'wb') as f:
        f.write(storage.seal(b'from tmp', 5)[:6])
    got = storage.read_copies(path)
    assert got.body == b'x' and got.damage == [path + ': missing']
    # nothing at all: a first boot, no damage
    os.remove(path + '.tmp')
    os.remove(path + '.bak')
    got = storage.read_copies(path)
    assert (got.body, got.existed, got.damage) == (None, False, [])
