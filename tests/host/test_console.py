"""`v2g console` driven without a terminal: --exec and commands on standard input."""

import json
import time

import pytest
import serial
from click.testing import CliRunner

from host_tools import console as C
from host_tools.commands.console import cli
from vboard_fixture import RunningBoard


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    b = RunningBoard(tmp_path_factory.mktemp("console") / "flash")
    with serial.Serial(b.endpoints["plant"], timeout=1) as p:
        p.write(b'{"do": "plug"}\n')
        assert json.loads(p.readline())["ok"]
    yield b
    b.stop()


def run(board, *args, stdin=None):
    return CliRunner().invoke(cli, ["--port", board.endpoints["link"], *args], input=stdin)


def test_exec_status(board):
    res = run(board, "--exec", "status")
    assert res.exit_code == 0, res.output
    assert "pilot B" in res.output and "contactor open" in res.output and "firmware " in res.output


def test_config_get_set_and_refusal_on_stdin(board):
    res = run(board, stdin="config set MAX_CHARGE_AMPS=20 MAX_DISCHARGE_AMPS=16\n"
                           "config get MAX_CHARGE_AMPS MAX_DISCHARGE_AMPS\n"
                           "config set MAX_CHARGE_AMPS=500\n"
                           "config get MAX_CHARGE_AMPS\n")
    assert res.exit_code == 1                                # one command was refused
    assert "config applied: MAX_CHARGE_AMPS, MAX_DISCHARGE_AMPS" in res.output
    assert res.output.count("MAX_CHARGE_AMPS = 20") == 2     # the refused change changed nothing
    assert "refused: V2G-400" in res.output and "MAX_CHARGE_AMPS" in res.output


def test_telemetry_events_meter_can_update(board):
    res = run(board, "--exec", "tel 2", "--exec", "events", "--exec", "meter", "--exec", "can 1",
              "--exec", "update")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    header = lines.index(next(ln for ln in lines if ln.strip().startswith("t_ms")))
    assert lines[header + 1].split()[1] == "B" and lines[header + 2].split()[1] == "B"
    assert "V2G-507" in res.output                          # the grid's enter-service wait, in the log
    assert "frequency" in res.output and "RS-485:" in res.output
    assert "CAN frames:" in res.output and '"bad_checksum": 0' in res.output   # zeros shown
    assert 'update: {' in res.output and '"running": "factory"' in res.output


def test_unknown_command_is_named(board):
    with C.Console(board.endpoints["link"]) as con:
        with pytest.raises(C.ConsoleError, match="unknown command 'fly'; type help"):
            con.run_line("fly me")
        with pytest.raises(C.ConsoleError, match="KEY=VALUE"):
            con.run_line("config set MAX_CHARGE_AMPS")
        assert "config get" in con.run_line("help")
        assert "[statistics]" in con.run_line("diag")
        assert "mode " in con.run_line("status")           # the link is back after diag


def test_a_list_or_object_value_is_refused_naming_the_key_before_anything_is_sent(board, monkeypatch):
    with C.Console(board.endpoints["link"]) as con:
        sent = []
        real = con.cmd
        monkeypatch.setattr(con, "cmd", lambda op, args=None: sent.append(op) or real(op, args))
        with pytest.raises(C.ConsoleError, match=r"^config set MAX_CHARGE_AMPS: a setting is a number, "
                                                 r"text, true/false or null, not a list or an object$"):
            con.run_line("config set MAX_CHARGE_AMPS=" + "[" * 100000)
        with pytest.raises(C.ConsoleError) as e:
            con.run_line("config set 'MAX\x1b[2J'={\"a\": 1}")
        assert "\x1b" not in str(e.value) and "'MAX\\x1b[2J'" in str(e.value), str(e.value)
        assert sent == []
        assert "config hash" in con.run_line("config set MAX_CHARGE_AMPS=32")   # the link goes on
        assert sent == ["config_set"]


def test_clear_a_latched_contactor_fault(tmp_path):
    b = RunningBoard(tmp_path / "flash")
    try:
        with serial.Serial(b.endpoints["plant"], timeout=2) as plant, \
                C.Console(b.endpoints["link"]) as con:
            assert con.run_line("clear").startswith("no contactor fault latched")
            plant.write(b'{"do": "contactor_fault", "kind": "welded"}\n')
            assert json.loads(plant.readline())["ok"]
            end = time.monotonic() + 10
            while "V2G-011" not in con.run_line("status"):
                assert time.monotonic() < end, "the welded contactor was not latched"
                time.sleep(0.2)
            with pytest.raises(C.ConsoleError, match="clear_fault: refused: V2G-011 contactor feedback still closed"):
                con.run_line("clear")
            plant.write(b'{"do": "contactor_restore"}\n')
            assert json.loads(plant.readline())["ok"]
            time.sleep(0.5)
            out = con.run_line("clear")
            assert out.startswith("contactor fault cleared") and "V2G-011" not in out
            assert "clear a latched contactor fault" in con.run_line("help")
    finally:
        b.stop()


@pytest.fixture(scope="module")
def keyed_board(tmp_path_factory):
    """A board with an update key installed, so that a download can begin."""
    from host_tools import vboard
    from signing import keys
    state = tmp_path_factory.mktemp("keyed") / "flash"
    vboard.provision(state)
    (state / "update_key.bin").write_bytes(keys.device_public_key(keys.generate()))
    b = RunningBoard(state)
    yield b
    b.stop()


def test_update_after_an_interrupted_download_shows_its_id_as_hex(keyed_board):
    # a fota that stopped half way leaves a download whose id is 16 raw bytes
    from host_tools.link import LinkClient
    board = keyed_board
    bid = bytes(range(200, 216))
    with LinkClient(board.endpoints["link"], heartbeat_s=None) as lk:
        lk.hello(timeout=20)
        r = lk.command("fota_begin", {"size": 5000, "id": bid})
        assert r.ok, r.msg
    try:
        res = run(board, "--exec", "update")
        assert res.exit_code == 0, res.output
        report = json.loads(res.output.split("update: ", 1)[1])
        assert report["dl"]["id"] == bid.hex() and report["dl"]["size"] == 5000
        out = C.Console(board.endpoints["link"])
        with out as con:
            text = con.run_line("diag")
        assert "id                 " + bid.hex() in text and "b'" not in text and 'b"' not in text
    finally:
        with LinkClient(board.endpoints["link"], heartbeat_s=None) as lk:
            assert lk.command("fota_abort", {}).ok


def test_commands_that_act_go_through_the_command_path_with_a_txn_each(board):
    with C.Console(board.endpoints["link"]) as con:
        try:
            out = con.run_line("stop")
            assert out.startswith("session stopped") and "(txn h" in out
            assert con.cmd("status").data["stopped"] is True
            assert "(txn h" in con.run_line("start") and con.cmd("status").data["stopped"] is False
            assert "(txn h" in con.run_line("charge-only on")
            assert con.cmd("status").data["charge_only"] is True
            assert "target 80.0 % (charge)" in con.run_line("setpoint 80 charge")
            assert con.cmd("status").data["target_pm"] == 800
            out = con.run_line("limit charge=10 discharge=none")
            assert out.startswith("CSMS limit charge 10.0 A discharge none (txn h")
            with pytest.raises(C.ConsoleError, match="setpoint: '120' is not a number from 0 to 100"):
                con.run_line("setpoint 120")
            with pytest.raises(C.ConsoleError, match=r"refused: V2G-400 mode: 'sideways'"):
                con.run_line("setpoint 50 sideways")
            with pytest.raises(C.ConsoleError, match="limit charge: 'lots' is not amps"):
                con.run_line("limit charge=lots")
            with pytest.raises(C.ConsoleError, match="charge-only on  or  charge-only off"):
                con.run_line("charge-only maybe")
            assert con.run_line("clear-fault").startswith("no contactor fault latched")
        finally:
            con.run_line("charge-only off")
            con.run_line("limit charge=none discharge=none")


def test_a_typo_gets_a_suggestion(board):
    with C.Console(board.endpoints["link"]) as con:
        with pytest.raises(C.ConsoleError, match=r"unknown command 'stauts'; did you mean status"):
            con.run_line("stauts")
        with pytest.raises(C.ConsoleError, match=r"did you mean charge-only"):
            con.run_line("charge-olny on")


def test_reconnect_after_the_link_failed(board):
    with C.Console(board.endpoints["link"]) as con:
        con.link._port.close()          # as a pulled cable: the reader stops
        end = time.monotonic() + 5
        while not con.link.error:
            assert time.monotonic() < end
            time.sleep(0.05)
        assert "type reconnect" in con.status_line()
        with pytest.raises(C.ConsoleError, match="type reconnect"):
            con.run_line("status")
        assert con.run_line("reconnect").startswith("reconnected to {}: firmware".format(board.endpoints["link"]))
        assert "pilot B" in con.run_line("status")


def test_events_name_state_changes_as_state(board):
    with C.Console(board.endpoints["link"]) as con:
        out = con.run_line("events")
    assert "state            pilot state B" in out and "None" not in out


def test_events_takes_how_many_of_the_newest_to_show(board):
    with C.Console(board.endpoints["link"]) as con:
        newest = con.run_line("events 2").splitlines()
        every = con.run_line("events").splitlines()
        with pytest.raises(C.ConsoleError, match="events: 'x' is not a whole number"):
            con.run_line("events x")
    # the log may have grown between the two reads (a busy host raises V2G-110): the two
    # newest of the first read follow each other in the second
    assert len(newest) == 2 and len(every) > 2
    i = every.index(newest[0])
    assert every[i:i + 2] == newest


def test_an_unknown_soc_is_shown_as_unknown_never_as_a_number():
    # telemetry's soc_pm is -1 while the controller knows no SoC (nothing plugged, no BMS
    # frame yet): every view says so instead of showing 0 % or -0.1 %
    from host_tools.link import soc_pct
    assert soc_pct({"soc_pm": -1}) is None and soc_pct({}) is None and soc_pct({"soc_pm": True}) is None
    assert soc_pct({"soc_pm": 0}) == 0.0 and soc_pct({"soc_pm": 455}) == 45.5
    unknown = {"t_ms": 1, "cp": "A", "mode": "idle", "soc_pm": -1}
    assert "SoC - " in C.status_line(unknown) and "-0.1" not in C._tel_row(unknown)
    assert C._tel_row(unknown).split()[8] == "-"           # the soc% column
    assert "SoC 45.5 %" in C.status_line({"mode": "charging", "soc_pm": 455})
