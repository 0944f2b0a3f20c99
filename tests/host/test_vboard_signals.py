"""A stop signal that arrives right after the board's first line still ends in a clean stop.

Scripts and CI jobs read the JSON line and may stop the board at once; the signal handlers must
already be in place by then, or the board dies without saving its files.
"""

import signal

import pytest

from vboard_fixture import RunningBoard


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_right_after_the_first_line_saves_and_exits_zero(tmp_path, sig):
    for attempt in range(3):
        board = RunningBoard(tmp_path / "flash{}".format(attempt))
        board.proc.send_signal(sig)
        assert board.proc.wait(20) == 0, board.proc.stderr.read()
        assert "files saved" in board.proc.stderr.read()
        assert (tmp_path / "flash{}".format(attempt) / "main.py").is_file()
