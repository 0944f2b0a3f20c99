"""A virtual board that cannot start says why in one line and leaves nothing behind."""

import os
import subprocess

import pytest

from vboard_fixture import V2G, vm_pids


def test_a_vm_that_fails_at_start_is_reported_once_not_restarted(tmp_path):
    state = tmp_path / "flash"
    state.mkdir()
    os.symlink(tmp_path / "nowhere", state / "dangling")   # the VM cannot load this folder
    proc = subprocess.run([V2G, "vboard", "--state", str(state)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode != 0 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "failed to start" in lines[0] and "dangling" in lines[0]
    assert vm_pids(state) == []


def test_an_unknown_board_is_refused_before_any_folder_is_made(tmp_path):
    proc = subprocess.run([V2G, "vboard", "--state", str(tmp_path / "new"), "--board", "nope"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "unknown board 'nope'" in proc.stderr
    assert not (tmp_path / "new").exists()



@pytest.mark.parametrize("state,board,says", [
    ("", "sim", "--state: names no folder"),
    ("dangling/sub", "sim", "a part of that path is a file or a link to nothing"),
    ("new", "../boards/sim", "unknown board '../boards/sim'"),
])
def test_bad_state_or_board_is_one_clear_line(tmp_path, state, board, says):
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    proc = subprocess.run([V2G, "vboard", "--state", state, "--board", board], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert says in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling"]   # nothing made
