"""The virtual board driven by the real tools: mpremote (command line) and pyserial."""

import hashlib
import os
import stat
import subprocess
import time

import pytest
import serial

from vboard_fixture import MPREMOTE, V2G, RunningBoard, vm_pids


@pytest.fixture
def board(tmp_path):
    b = RunningBoard(tmp_path / "flash")
    yield b
    b.stop()


def test_first_line_names_every_endpoint(board):
    for name in ("repl", "link", "plant", "rs485", "can"):
        assert stat.S_ISCHR(os.stat(board.endpoints[name]).st_mode), name
    # A new state folder starts with the working tree's firmware on it.
    assert (board.state / "core").is_dir()
    assert (board.state / "board" / "__init__.py").is_file()


def test_mpremote_exec_eval_run(board, tmp_path):
    assert board.mpremote("exec", "print(1+1)").stdout.strip() == "2"
    assert board.mpremote("eval", "6*7").stdout.strip() == "42"
    script = tmp_path / "hello.py"
    script.write_text("import sys\nprint('hello from', sys.implementation.name)\n")
    assert board.mpremote("run", str(script)).stdout.strip() == "hello from micropython"


def test_copy_read_back_identical_and_hash(board, tmp_path):
    data = os.urandom(50_000)
    src = tmp_path / "blob.bin"
    src.write_bytes(data)
    board.mpremote("fs", "cp", str(src), ":blob.bin")
    back = tmp_path / "back.bin"
    board.mpremote("fs", "cp", ":blob.bin", str(back))
    assert back.read_bytes() == data
    out = board.mpremote("fs", "sha256sum", ":blob.bin").stdout
    assert hashlib.sha256(data).hexdigest() in out


def test_fs_commands_and_errors(board, tmp_path):
    board.mpremote("fs", "mkdir", ":logs")
    again = board.mpremote("fs", "mkdir", ":logs", check=False)
    assert again.returncode != 0 and "File exists" in again.stderr
    missing = board.mpremote("fs", "rm", ":nope.txt", check=False)
    assert missing.returncode != 0 and "No such file" in missing.stderr
    (tmp_path / "f.txt").write_text("x")
    board.mpremote("fs", "cp", str(tmp_path / "f.txt"), ":logs/f.txt")
    assert "f.txt" in board.mpremote("fs", "ls", ":logs").stdout
    board.mpremote("fs", "rm", ":logs/f.txt")
    board.mpremote("fs", "rmdir", ":logs")
    assert "logs" not in board.mpremote("fs", "ls").stdout


def test_recursive_copy_skips_unchanged(board, tmp_path):
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.py").write_text("A = 1\n")
    (tree / "sub" / "b.py").write_text("B = 2\n")
    board.mpremote("fs", "cp", "-r", str(tree) + "/", ":")
    second = board.mpremote("fs", "cp", "-r", str(tree) + "/", ":").stdout
    assert "Up to date: ./a.py" in second and "Up to date: ./sub/b.py" in second
    (tree / "a.py").write_text("A = 3\n")
    third = board.mpremote("fs", "cp", "-r", str(tree) + "/", ":").stdout
    assert "Up to date: ./a.py" not in third and "Up to date: ./sub/b.py" in third
    assert board.mpremote("exec", "import a; print(a.A)").stdout.strip() == "3"


def test_soft_reset_keeps_files_and_resume(board, tmp_path):
    (tmp_path / "keep.txt").write_text("kept")
    board.mpremote("fs", "cp", str(tmp_path / "keep.txt"), ":keep.txt")
    board.mpremote("exec", "x = 5")
    board.mpremote("resume", "exec", "print(x)")  # resume: no reset, state is still there
    board.mpremote("soft-reset")
    gone = board.mpremote("resume", "exec", "print(x)", check=False)
    assert "NameError" in gone.stdout + gone.stderr
    assert board.mpremote("fs", "cat", ":keep.txt").stdout.strip() == "kept"


def test_files_survive_board_restart(tmp_path):
    state = tmp_path / "flash"
    first = RunningBoard(state)
    (tmp_path / "cfg.json").write_text('{"a": 1}')
    first.mpremote("fs", "cp", str(tmp_path / "cfg.json"), ":cfg.json")
    assert first.stop() == 0
    second = RunningBoard(state)
    try:
        assert second.mpremote("fs", "cat", ":cfg.json").stdout.strip() == '{"a": 1}'
    finally:
        second.stop()


def read_until(port, marker, timeout=10):
    got = b""
    end = time.monotonic() + timeout
    while marker not in got and time.monotonic() < end:
        got += port.read(port.in_waiting or 1)
    return got


def put_boot_and_main(board, tmp_path):
    """boot.py and main.py that say when they run."""
    for name in ("boot", "main"):
        (tmp_path / (name + ".py")).write_text("print('{} ran')\n".format(name))
        board.mpremote("fs", "cp", str(tmp_path / (name + ".py")), ":{}.py".format(name))


def test_pyserial_friendly_repl_and_soft_reset_runs_boot_and_main(board, tmp_path):
    put_boot_and_main(board, tmp_path)
    with serial.Serial(board.repl, 115200, timeout=0.2) as port:
        port.write(b"\r\x03\x02")       # interrupt, friendly REPL
        read_until(port, b">>> ")
        port.write(b"21*2\r")
        assert b"42\r\n" in read_until(port, b"42\r\n")  # lines end in CR LF as on a board
        port.write(b"\x04")             # Ctrl-D at the prompt: soft reset
        out = read_until(port, b">>> ", timeout=20)
    assert b"MPY: soft reboot" in out
    assert out.index(b"boot ran") < out.index(b"main ran") < out.rindex(b">>> ")


def test_soft_reset_in_raw_repl_runs_boot_but_not_main(board, tmp_path):
    put_boot_and_main(board, tmp_path)
    with serial.Serial(board.repl, 115200, timeout=0.2) as port:
        port.write(b"\r\x03\x01")     # interrupt, raw REPL
        read_until(port, b"raw REPL; CTRL-B to exit\r\n>")
        port.write(b"\x04")             # Ctrl-D in raw REPL: soft reset, as mpremote does
        raw = read_until(port, b"raw REPL; CTRL-B to exit\r\n>", timeout=20)
        port.write(b"\x02")             # back to the friendly REPL: main.py still does not run
        friendly = read_until(port, b">>> ")
        port.write(b"\x04")             # Ctrl-D at the friendly prompt: boot.py and main.py
        again = read_until(port, b"main ran", timeout=20)
    assert b"boot ran" in raw and b"main ran" not in raw
    assert b"main ran" not in friendly
    assert b"boot ran" in again and b"main ran" in again


def test_plant_reboot_is_the_reset_button_even_with_the_controller_stopped(board):
    from host_tools.link import LinkClient
    with LinkClient(board.endpoints["link"], heartbeat_s=None) as lk:
        boots = lk.hello(timeout=5)["boot_count"]
    board.mpremote("exec", "pass")      # mpremote's raw-REPL soft reset: main.py does not run
    with LinkClient(board.endpoints["link"], heartbeat_s=None) as lk:
        with pytest.raises(Exception, match="no 'hello'"):
            lk.hello(timeout=1)
    with serial.Serial(board.endpoints["plant"], timeout=5) as plant:
        plant.write(b'{"do": "reboot"}\n')
        assert plant.readline() == b'{"ok": true, "do": "reboot"}\n'
    end = time.monotonic() + 20
    with LinkClient(board.endpoints["link"], heartbeat_s=None) as lk:
        while True:
            try:
                hello = lk.hello(timeout=1)
                break
            except Exception:
                assert time.monotonic() < end, "the controller did not start after the reboot"
    assert hello["boot_count"] == boots + 1


def test_state_folder_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("not a folder")
    proc = subprocess.run([V2G, "vboard", "--state", str(f)], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode != 0
    assert "--state" in proc.stderr and "is a file" in proc.stderr


def test_state_folder_that_cannot_be_created_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("not a folder")
    proc = subprocess.run([V2G, "vboard", "--state", str(f / "sub")], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode != 0
    assert "cannot create state folder" in proc.stderr and str(f / "sub") in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_missing_node_is_named_with_the_install_command(tmp_path):
    env = dict(os.environ, PATH=str(tmp_path))  # no node on PATH
    proc = subprocess.run([V2G, "vboard", "--state", str(tmp_path / "s")], capture_output=True,
                          text=True, env=env, timeout=30)
    assert proc.returncode != 0
    assert "Node.js is not installed" in proc.stderr and "apt-get install" in proc.stderr


def test_vm_does_not_outlive_a_killed_board(tmp_path):
    state = tmp_path / "flash"
    b = RunningBoard(state)
    assert vm_pids(state), "the VM process should be running"
    b.kill()
    deadline = time.monotonic() + 10
    while vm_pids(state) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert vm_pids(state) == []


def test_sigterm_exits_zero_after_saving(tmp_path):
    b = RunningBoard(tmp_path / "flash")
    b.mpremote("exec", "open('note.txt','w').write('saved at exit')")
    assert b.stop() == 0
    assert (tmp_path / "flash" / "note.txt").read_text() == "saved at exit"


def test_missing_vm_package_is_named_with_the_install_command(tmp_path, monkeypatch):
    from host_tools import vm
    from host_tools.vboard import VirtualBoard
    monkeypatch.setattr(vm, "VM_PACKAGE_NAME", "@micropython/no-such-package")
    monkeypatch.delenv(vm.NODE_MODULES_ENV, raising=False)
    with pytest.raises(vm.VmMissing) as e:
        VirtualBoard(tmp_path / "s").check()
    assert "MicroPython VM package is not installed" in str(e.value) and "npm ci" in str(e.value)


def test_repl_on_a_socket_url(tmp_path):
    b = RunningBoard(tmp_path / "flash", "--repl-port", "0")
    try:
        url = b.endpoints["repl_socket"]
        assert url.startswith("socket://127.0.0.1:")
        proc = subprocess.run([MPREMOTE, "connect", url, "exec", "print(3*3)"],
                              capture_output=True, text=True, timeout=60)
        assert proc.stdout.strip() == "9", proc.stderr
    finally:
        b.stop()


def test_repl_port_in_use_is_refused_in_one_line(tmp_path):
    import socket
    busy = socket.create_server(("127.0.0.1", 0))
    try:
        port = busy.getsockname()[1]
        proc = subprocess.run([V2G, "vboard", "--state", str(tmp_path / "s"), "--repl-port", str(port)],
                              capture_output=True, text=True, timeout=30)
    finally:
        busy.close()
    assert proc.returncode != 0
    assert "cannot serve the REPL on 127.0.0.1:{}".format(port) in proc.stderr
    assert "Traceback" not in proc.stderr
