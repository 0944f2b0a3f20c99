"""One tool per controller port: the second is refused naming the PID that holds it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from host_tools import link
from host_tools.link import LinkClient, PortInUse, PortLock

V2G = str(Path(sys.executable).with_name("v2g"))


@pytest.fixture
def pty_port(tmp_path, monkeypatch):
    monkeypatch.setenv("V2G_LOCK_DIR", str(tmp_path))
    master, slave = os.openpty()
    yield os.ttyname(slave)
    os.close(master)
    os.close(slave)


def test_a_second_client_on_the_same_port_is_refused_with_the_owner_pid(pty_port):
    with LinkClient(pty_port, heartbeat_s=None):
        with pytest.raises(PortInUse, match=r"in use by PID {}\b".format(os.getpid())):
            LinkClient(pty_port, heartbeat_s=None).open()
    # released on close: the next tool gets it
    with LinkClient(pty_port, heartbeat_s=None):
        pass


def test_the_lock_is_keyed_by_the_real_device_path(pty_port, tmp_path):
    alias = tmp_path / "by-id-controller"
    alias.symlink_to(pty_port)
    with PortLock(pty_port):
        with pytest.raises(PortInUse):
            PortLock(str(alias)).acquire()


@pytest.mark.parametrize("tool", [["diag", "--all"], ["console", "--exec", "status"], ["fota"]])
def test_another_v2g_tool_is_refused_while_a_console_holds_the_port(pty_port, tool, tmp_path):
    args = tool[:1] + ["--port", pty_port] + tool[1:]
    if tool[0] == "fota":
        # a bundle whose header reads well enough for fota to open the port
        bundle = tmp_path / "u.bin"
        bundle.write_bytes(b"V2GB" + (1).to_bytes(4, "big") + bytes(200))
        args.append(str(bundle))
    with LinkClient(pty_port, heartbeat_s=None):
        proc = subprocess.run([V2G, *args], capture_output=True, text=True, timeout=60,
                              env=dict(os.environ))
    assert proc.returncode != 0
    assert "in use by PID {}".format(os.getpid()) in proc.stderr + proc.stdout, proc.stderr


def test_flash_takes_the_same_lock(pty_port):
    from host_tools import flash
    with LinkClient(pty_port, heartbeat_s=None):
        with pytest.raises(flash.FlashError, match="in use by PID"):
            with flash.Board(pty_port):
                pass


def test_a_lock_left_by_a_dead_process_is_taken_over(pty_port):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    path = link.lock_path(pty_port)
    Path(path).write_text("{} v2g console\n".format(dead))
    with PortLock(pty_port):
        assert Path(path).read_text().split()[0] == str(os.getpid())


def test_a_url_has_no_lock_file():
    assert link.lock_path("socket://localhost:7000") is None


def test_the_bridge_and_a_tool_exclude_each_other(pty_port):
    import asyncio

    from host_tools.bridge.alink import AsyncLink

    async def run():
        with LinkClient(pty_port, heartbeat_s=None):
            with pytest.raises(PortInUse, match="in use by PID"):
                await AsyncLink(pty_port, heartbeat_s=None).open()
        bridge = await AsyncLink(pty_port, heartbeat_s=None).open()
        try:
            with pytest.raises(PortInUse, match="in use by PID {}".format(os.getpid())):
                LinkClient(pty_port, heartbeat_s=None).open()
        finally:
            await bridge.close()
        with LinkClient(pty_port, heartbeat_s=None):     # released with the bridge's link
            pass
    asyncio.run(run())
