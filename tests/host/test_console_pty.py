"""`v2g console` at a terminal (a pseudo-terminal driven by pexpect): the status bar, rows of
tel and watch as they arrive, and Ctrl-C that stops a stream keeping what it showed."""

import json
import os
import signal
import sys
from pathlib import Path

import pexpect
import pytest
import serial

from vboard_fixture import RunningBoard

V2G = str(Path(sys.executable).with_name("v2g"))


def plant(board, event):
    with serial.Serial(board.endpoints["plant"], timeout=2) as p:
        p.write((json.dumps(event) + "\n").encode())
        assert json.loads(p.readline())["ok"]


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    b = RunningBoard(tmp_path_factory.mktemp("pty") / "flash")
    plant(b, {"do": "plug"})
    yield b
    b.stop()


class Terminal:
    """pexpect on the console, answering the cursor position requests a terminal answers
    (prompt_toolkit draws the bottom bar only once it knows where the cursor is)."""

    def __init__(self, child):
        self.child = child

    def expect(self, pattern, timeout=20):
        while True:
            try:
                i = self.child.expect([pattern, r"\x1b\[6n"], timeout=timeout)
            except (pexpect.EOF, pexpect.TIMEOUT) as e:
                # say what the console printed, not pexpect's state dump
                raise AssertionError("console: no {!r} within {} s; it printed: {!r}".format(
                    pattern, timeout, self.child.before)) from e
            if i == 0:
                return self.child.match
            self.child.send("\x1b[30;1R")

    def __getattr__(self, name):
        return getattr(self.child, name)


def start_console(board, tmp_path, preexec_fn=None):
    env = dict(os.environ, TERM="xterm", HOME=str(tmp_path))
    # --timeout 10: a busy machine can keep the board's first answer past the 3 s default
    child = pexpect.spawn(V2G, ["console", "--port", board.endpoints["link"], "--timeout", "10"], env=env,
                          dimensions=(30, 140), timeout=20, encoding="utf-8", codec_errors="replace",
                          preexec_fn=preexec_fn)
    term = Terminal(child)
    term.expect("v2g>")
    return term


@pytest.fixture(params=["sigint as usual", "sigint ignored by whoever started it"])
def console(board, tmp_path, request):
    # A shell without job control (a script, a CI runner) starts its background jobs with
    # SIGINT ignored, and what they start inherits that: Ctrl-C must stop a stream either way.
    ignore = request.param != "sigint as usual"
    term = start_console(board, tmp_path, (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore else None)
    child = term.child
    yield term
    try:
        # Ctrl-D ends the console at its prompt, where the terminal is raw (no echo). Sent
        # while a command's output is still being printed (cooked mode), the terminal's line
        # discipline takes it as an end of file and the console never sees it.
        child.waitnoecho(20)
        child.sendcontrol("d")
        term.expect(pexpect.EOF)
    finally:
        child.close(force=True)     # never leave a console holding the port for the next test


def test_the_status_bar_shows_the_state_without_a_command(console):
    # the bottom bar is drawn from telemetry as it arrives: no command typed yet
    console.expect(r"connected\s+pilot B\s+contactor open\s+0\.0 A\s+SoC [\d.]+ %\s+errors: ")


def test_tel_rows_arrive_one_by_one_and_ctrl_c_keeps_them(console):
    console.sendline("tel 1000")
    console.expect(r"t_ms cp mode")
    # each row is shown as its sample arrives (1 a second), long before 1000 samples
    console.expect(r"\n\s*\d+ B\s+connected", timeout=5)
    console.expect(r"\n\s*\d+ B\s+connected", timeout=5)
    console.sendintr()
    console.expect(r"\(stopped by Ctrl-C\)")
    console.expect("v2g>")
    console.sendline("status")
    console.expect("mode connected")


def test_watch_shows_events_as_they_happen_and_ctrl_c_keeps_them(board, console):
    console.sendline("watch 600")
    plant(board, {"do": "meter_fault", "kind": "timeout"})
    console.expect(r"V2G-120 raised", timeout=15)
    plant(board, {"do": "meter_restore"})
    console.expect(r"V2G-120 clear", timeout=15)
    console.sendintr()
    console.expect(r"\(stopped by Ctrl-C\)")
    console.expect("v2g>")
