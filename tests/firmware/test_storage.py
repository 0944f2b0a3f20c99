"""Atomic storage, on both interpreters (each runs in its own scratch folder)."""
import os
import sys

from app import storage
from fwtest import raises

# Both interpreters have /tmp (the VM's is in memory); one folder per interpreter.
TMP = '/tmp/v2g_storage_test_' + sys.implementation.name


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
