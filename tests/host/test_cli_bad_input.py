"""Bad input to every `v2g` command ends in a short error naming the argument and why:
non-zero exit, no Python traceback, and no file of the user's overwritten.

The real command runs in a subprocess, as a user would run it.
"""

import subprocess
from pathlib import Path

import pytest

from vboard_fixture import V2G, RunningBoard

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "scenarios" / "demo.toml"
BMS = ROOT / "scenarios" / "bench" / "bms_limits.toml"


def v2g(*args, cwd, timeout=30):
    return subprocess.run([V2G, *[str(a) for a in args]], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


def assert_refused(proc, *names):
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    text = proc.stderr + proc.stdout
    for name in names:
        assert name in text, "{!r} not named in: {}".format(name, text)
    # a clear error is short: the usage hint and one or two lines of message
    assert len(proc.stderr.strip().splitlines()) <= 4, proc.stderr


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad-input")
    (d / "adir").mkdir()
    (d / "empty").write_bytes(b"")
    (d / "garbage.bin").write_bytes(bytes(range(256)) * 4)
    (d / "fw.py").write_text("fw\n")
    (d / "not-a-key.pem").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    (d / "list.json").write_text("[1, 2, 3]")
    (d / "not-a-scenario.toml").write_text("[foo]\nbar = 1\n")
    (d / "twice.json").write_text('{"MIN_SOC_THRESHOLD": 40,\n "MIN_SOC_THRESHOLD": 10}')
    (d / "broken.json").write_text('{"MIN_SOC_THRESHOLD": 40,\n "EVSE_TEMP_DERATE_C": 75.}')
    (d / "finer.json").write_text('{"EVSE_TEMP_DERATE_C": 74.9999999}')
    (d / "huge.json").write_text('{"MAX_DISCHARGE_AMPS": 1e308}')
    (d / "nothex.hex").write_text("hello\n")
    (d / "eof-only.hex").write_text(":00000001FF\n")
    (d / "base.hex").write_text(":020000040800F2\n:10000000000102030405060708090A0B0C0D0E0F78\n:00000001FF\n")
    (d / "pass.txt").write_text("secret\n")
    (d / "dangling").symlink_to(d / "no-such-target")
    assert v2g("keygen", "--out", "k.pem", cwd=d).returncode == 0
    assert v2g("sign", "--key", "k.pem", "--seq", "1", "--version", "1.0", "--board", "sim", "-o", "b.bin",
               "fw.py", cwd=d).returncode == 0
    return d


# (arguments, what the message must name). Cases fixed here and a sample of ones that held.
NO_BOARD = [
    # sign / keygen / verify
    (["sign", "--key", "k.pem", "--seq", "1", "--version", "1", "--board", "sim", "-o", "nodir/x.bin", "fw.py"],
     ["-o / --out", "nodir"]),
    (["sign", "--key", "k.pem", "--seq", "1", "--version", "1", "--board", "sim", "-o", "garbage.bin/x", "fw.py"],
     ["-o / --out", "not a folder"]),
    (["sign", "--key", "k.pem", "--seq", "1", "--version", "1", "--board", "sim", "-o", "out.bin",
      "--hex-out", "nodir/x.hex", "--hex-address", "0", "fw.py"], ["--hex-out", "nodir"]),
    (["sign", "--key", "not-a-key.pem", "--seq", "1", "--version", "1", "--board", "sim", "-o", "o.bin", "fw.py"],
     ["not-a-key.pem", "not a PEM private key"]),
    (["sign", "--key", "k.pem", "--seq", "0", "--version", "1", "--board", "sim", "-o", "o.bin", "fw.py"],
     ["--seq"]),
    (["sign", "--key", "k.pem", "--seq", "1", "--version", "1", "--board", "sim", "-o", "o.bin",
      "--hex-address", "-5", "fw.py"], ["--hex-address"]),
    (["keygen", "--out", "new.pem", "--passphrase-file", "empty"], ["--passphrase-file", "empty"]),
    (["verify", "--key", "garbage.bin", "b.bin"], ["garbage.bin", "not a PEM public key"]),
    (["verify", "--key", "k.pem", "b.bin"], ["k.pem", "private key"]),
    (["verify", "--key", "k.pub.pem", "garbage.bin"], ["header", "not an update bundle"]),
    (["verify", "--key", "k.pub.pem", "adir"], ["BUNDLE", "is a directory"]),
    # image
    (["image", "--board", "pyboard", "--base", "empty", "-o", "o.hex"], ["empty", "holds no data"]),
    (["image", "--board", "pyboard", "--base", "eof-only.hex", "-o", "o.hex"], ["eof-only.hex", "holds no data"]),
    (["image", "--board", "pyboard", "--base", "nothex.hex", "-o", "o.hex"], ["nothex.hex", "invalid record"]),
    (["image", "--board", "pyboard", "--base", "base.hex", "-o", "garbage.bin/o.hex"], ["-o / --out"]),
    (["image", "--board", "pyboard", "--base", "base.hex", "-o", "o.hex", "--config", "list.json"],
     ["V2G-400", "got list"]),
    (["image", "--board", "pyboard", "--base", "base.hex", "-o", "o.hex", "--pubkey", "dangling"],
     ["dangling", "cannot read public key"]),
    (["image", "--board", "nosuch", "--base", "base.hex", "-o", "o.hex"], ["unknown board 'nosuch'"]),
    # sim: output problems are found before the run, so no run is lost to them
    (["sim", DEMO, "--out", "garbage.bin/t.jsonl"], ["--out", "not a folder"]),
    (["sim", DEMO, "--plot", "garbage.bin/p.png"], ["--plot", "not a folder"]),
    (["sim", DEMO, "--plot", "p.txt"], ["--plot", "'.txt'"]),
    (["sim", "garbage.bin"], ["garbage.bin", "not UTF-8"]),
    (["sim", "not-a-scenario.toml"], ["not-a-scenario.toml", "unknown key 'foo'"]),
    (["sim", "dangling"], ["dangling", "cannot read"]),
    # bench: the scenario, then every port and output, before anything is opened
    (["bench", "garbage.bin", "--link", "/dev/null", "--can-channel", "x"], ["garbage.bin", "not UTF-8"]),
    (["bench", BMS, "--link", "fw.py", "--can-channel", "x"], ["--link", "regular file"]),
    (["bench", BMS, "--link", "socket://127.0.0.1:99999", "--can-channel", "x"], ["--link", "1..65535"]),
    (["bench", BMS, "--link", "/dev/nosuch", "--can-channel", "x", "--settle", "nan"], ["--settle"]),
    (["bench", BMS, "--link", "/dev/nosuch", "--can-channel", "x", "--settle", "-1"], ["--settle"]),
    (["bench", BMS, "--link", "/dev/nosuch", "--can-channel", "x", "--can-bitrate", "-5"], ["--can-bitrate"]),
    (["bench", BMS, "--link", "/dev/nosuch", "--can-channel", "x"], ["--link", "no such device"]),
    # ports that cannot be serial, for every command that opens one
    (["console", "--port", "/dev/null", "--exec", "status"], ["--port", "/dev/null", "not a serial port"]),
    (["console", "--port", "adir", "--exec", "status"], ["--port", "is a directory"]),
    (["console", "--port", "ftp://host/x", "--exec", "status"], ["--port", "unknown URL scheme 'ftp'"]),
    (["console", "--port", "/dev/nosuch", "--timeout", "nan"], ["--timeout"]),
    (["diag", "--port", "fw.py"], ["fw.py", "regular file"]),
    (["diag", "--port", "/dev/nosuch", "--timeout", "nan"], ["--timeout"]),
    (["fota", "--port", "/dev/null", "b.bin"], ["--port", "not a serial port"]),
    (["fota", "--port", "/dev/nosuch", "--baud", "-9600", "b.bin"], ["--baud"]),
    (["fota", "--port", "/dev/nosuch", "garbage.bin"], ["garbage.bin", "not an update bundle"]),
    (["flash", "--port", "/dev/nosuch", "--board", "sim"], ["--port", "cannot open /dev/nosuch"]),
    (["flash", "--port", "socket://127.0.0.1", "--board", "sim"], ["--port", "HOST:PORT"]),
    (["flash", "--port", "/dev/nosuch", "--board", "sim", "--boot-wait", "nan"], ["--boot-wait"]),
    (["flash", "--port", "/dev/nosuch", "--board", "sim", "--dry-run", "--link", "/dev/nosuch"],
     ["--link", "--dry-run"]),
    (["flash", "--port", "/dev/nosuch", "--board", "sim", "--config", "list.json"], ["V2G-400", "got list"]),
    (["flash", "--port", "/dev/nosuch", "--board", "sim", "--config", "twice.json"],
     ["V2G-400", "MIN_SOC_THRESHOLD: given more than once (again at line 2)"]),
    (["flash", "--port", "/dev/nosuch", "--board", "sim", "--config", "broken.json"],
     ["V2G-400", "not valid JSON at line 2 column"]),
    (["flash", "--port", "/dev/nosuch", "--board", "sim", "--config", "finer.json"],
     ["V2G-400", "EVSE_TEMP_DERATE_C: value 74.9999999 is finer than the 0.1 C step"]),
    (["flash", "--port", "/dev/nosuch", "--board", "sim", "--config", "huge.json"],
     ["V2G-400", "MAX_DISCHARGE_AMPS: value 1e+308 out of range"]),
    (["flash", "--port", "/dev/nosuch", "--board", "sim", "--pubkey", "not-a-key.pem"],
     ["not-a-key.pem", "not a PEM public key"]),
]


@pytest.mark.parametrize("args,names", NO_BOARD, ids=[" ".join(str(a) for a in c[0])[:60] for c in NO_BOARD])
def test_bad_input_is_a_clear_error(fx, args, names):
    assert_refused(v2g(*args, cwd=fx), *names)


def test_fota_json_reports_a_bad_bundle_as_json(fx):
    proc = v2g("fota", "--port", "/dev/nosuch", "--json", "garbage.bin", cwd=fx)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert '"ok": false' in proc.stdout and "garbage.bin: not an update bundle" in proc.stdout


# Outputs that name an input: refused, and the input is left as it was.
OVERWRITES = [
    (["sign", "--key", "k.pem", "--seq", "1", "--version", "1", "--board", "sim", "-o", "fw.py", "fw.py"],
     "fw.py", "-o / --out"),
    (["sign", "--key", "k.pem", "--seq", "1", "--version", "1", "--board", "sim", "-o", "o.bin",
      "--hex-out", "k.pem", "--hex-address", "0", "fw.py"], "k.pem", "--hex-out"),
    (["image", "--board", "pyboard", "--base", "base.hex", "-o", "base.hex"], "base.hex", "-o / --out"),
    (["keygen", "--out", "pass.txt", "--passphrase-file", "pass.txt", "--force"], "pass.txt", "--out"),
    # /dev/tty: a character device that passes the port checks, so the --plant check is reached
    (["bench", BMS, "--link", "/dev/tty", "--can-channel", "/dev/tty", "--plant", "fw.py"], "fw.py", "--plant"),
]


@pytest.mark.parametrize("args,kept,name", OVERWRITES, ids=[c[2] + " " + c[1] for c in OVERWRITES])
def test_an_input_is_never_overwritten(fx, args, kept, name):
    before = (fx / kept).read_bytes()
    assert_refused(v2g(*args, cwd=fx), name, kept)
    assert (fx / kept).read_bytes() == before


def test_bench_plant_that_does_not_exist_is_not_created(fx):
    assert_refused(v2g("bench", BMS, "--link", "/dev/tty", "--can-channel", "/dev/tty", "--plant", "plant.txt",
                       cwd=fx),
                   "--plant", "no such device")
    assert not (fx / "plant.txt").exists()


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    b = RunningBoard(tmp_path_factory.mktemp("bad-input-board") / "state")
    yield b
    b.stop()


@pytest.mark.parametrize("line,names", [
    ("tel abc", ["tel", "'abc'", "1 to 100"]),
    ("tel 0", ["tel", "'0'"]),
    ("can -1", ["can", "'-1'"]),
    ("watch nan", ["watch", "'nan'"]),
    ("watch inf", ["watch", "'inf'"]),
    ('config get "unclosed', ["No closing quotation"]),
    ("config set =5", ["config set wants KEY=VALUE", "'=5'"]),
    ("status now", ["status takes no arguments"]),
    ("config set MAX_CHARGE_AMPS=999", ["V2G-400", "MAX_CHARGE_AMPS"]),
    ("config set MAX_CHARGE_AMPS=" + "[" * 50000, ["config set MAX_CHARGE_AMPS", "not a list"]),
    ("config set MIN_SOC_THRESHOLD=40 EVSE_TEMP_DERATE_C=74.9999999",
     ["V2G-400", "EVSE_TEMP_DERATE_C", "finer than the 0.1 C step"]),
    ("teleport", ["unknown command 'teleport'"]),
], ids=lambda v: v[:60] if isinstance(v, str) else None)
def test_console_command_with_bad_arguments_is_an_error(fx, board, line, names):
    proc = v2g("console", "--port", board.endpoints["link"], "--exec", line, cwd=fx)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    for name in names:
        assert name in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_flash_on_a_port_that_is_not_a_repl_ends_with_a_clear_error(fx, board):
    # the host-link port answers in framed CBOR, never with a REPL: mpremote alone would wait
    # for ever on a pty; flash gives up within mpremote's own deadlines and keeps it short
    proc = v2g("flash", "--port", board.endpoints["link"], "--board", "sim", "--dry-run", cwd=fx,
               timeout=60)
    assert_refused(proc, "no MicroPython REPL on " + board.endpoints["link"])
    assert len(proc.stdout) < 200, proc.stdout        # none of the port's bytes dumped


def test_a_board_name_is_never_a_path(fx):
    assert_refused(v2g("flash", "--port", "/dev/null", "--board", "../boards/sim", cwd=fx),
                   "unknown board '../boards/sim'")
