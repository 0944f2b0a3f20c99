"""The bridge's layout: the `ocpp` package is used in one module per OCPP station (2.x:
ocpp/connection.py, 1.6: ocpp16/connection.py) only, through its public names, and no part
of the bridge reaches into another object's private attributes; and what that module adds
to the package (CALLs handled beside our own, CALLERRORs named)."""

import ast
import asyncio
import json
from pathlib import Path

import pytest
from ocpp import v21, v201
from ocpp.charge_point import ChargePoint

from host_tools.bridge.ocpp import OcppStation
from host_tools.bridge.ocpp.connection import CallRefused, Connection, on, routes_of

ROOT = Path(__file__).resolve().parents[2]
BRIDGE = ROOT / "host_tools" / "bridge"
CONNECTION = BRIDGE / "ocpp" / "connection.py"
CONNECTION16 = BRIDGE / "ocpp16" / "connection.py"
CONNECTIONS = (CONNECTION, CONNECTION16)


def _package_privates():
    """The `ocpp` ChargePoint's private names (methods and the attributes its __init__ sets)."""
    names = set()
    for cls in (ChargePoint, v201.ChargePoint, v21.ChargePoint):
        names |= {n for n in vars(cls) if n.startswith("_") and not n.startswith("__")}
    names |= {n for n in vars(ChargePoint("x", None)) if n.startswith("_")}
    return names


def ocpp_uses(path):
    """Problems in one module: an import of the `ocpp` package outside connection.py; an
    import of a private name of it; an attribute named like the package's privates."""
    tree = ast.parse(path.read_text(), str(path))
    privates = _package_privates()
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
            names = []
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            mods = [node.module]
            names = [a.name for a in node.names]
        else:
            if isinstance(node, ast.Attribute) and node.attr in privates:
                out.append(f"{path.name}:{node.lineno}: .{node.attr} is private to the ocpp package")
            continue
        for mod in mods:
            if mod.split(".")[0] != "ocpp":
                continue
            if path not in CONNECTIONS:
                out.append(f"{path.name}:{node.lineno}: imports {mod} (only connection.py may)")
            if any(part.startswith("_") for part in mod.split(".")) or \
                    any(n.startswith("_") for n in names):
                out.append(f"{path.name}:{node.lineno}: imports a private name of {mod}")
    return out


def private_reaches(path):
    """`x._name` where x is not self/cls: another object's private attribute."""
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                out.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    return out


def _modules():
    return sorted(p for p in BRIDGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_only_connection_uses_the_ocpp_package_and_only_its_public_names():
    assert CONNECTION in _modules() and CONNECTION16 in _modules()
    problems = [p for m in _modules() for p in ocpp_uses(m)]
    assert problems == []


def test_the_station_blocks_and_the_service_keep_to_public_attributes():
    mods = sorted((BRIDGE / "ocpp").glob("*.py")) + sorted((BRIDGE / "ocpp16").glob("*.py")) + \
        [BRIDGE / "service.py"]
    problems = [p for m in mods for p in private_reaches(m)]
    assert problems == []


def shared_connection_imports(path):
    """An ocpp16 module other than its connection.py importing the 2.x connection layer."""
    tree = ast.parse(path.read_text(), str(path))
    return [f"{path.name}:{n.lineno}: imports {n.module} (1.6 blocks use ocpp16.connection)"
            for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "host_tools.bridge.ocpp.connection"
            and path != CONNECTION16]


def test_the_16_blocks_reach_ocpp_j_through_their_one_connection_module(tmp_path):
    mods = sorted((BRIDGE / "ocpp16").glob("*.py"))
    assert [p for m in mods for p in shared_connection_imports(m)] == []
    bad = tmp_path / "bad.py"
    bad.write_text("from host_tools.bridge.ocpp.connection import on\n")
    assert shared_connection_imports(bad) == ["bad.py:1: imports host_tools.bridge.ocpp.connection "
                                              "(1.6 blocks use ocpp16.connection)"]


def test_every_16_csms_request_has_one_handler_in_one_block(tmp_path):
    from host_tools.bridge.ocpp16.negotiated import NegotiatedStation
    st = NegotiatedStation("CS1", "ws://127.0.0.1:9/ocpp", None, tmp_path, None).v16
    assert sorted(st.routes) == [
        "ChangeAvailability", "ChangeConfiguration", "ClearChargingProfile", "DataTransfer",
        "GetCompositeSchedule", "GetConfiguration", "GetDiagnostics", "RemoteStartTransaction",
        "RemoteStopTransaction", "Reset", "SetChargingProfile", "SignedUpdateFirmware", "TriggerMessage"]


def test_the_checks_see_what_they_look_for(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from ocpp.charge_point import _raise_key_error\n"
                   "def f(cp, other):\n    cp._response_queue.put_nowait(1)\n    return other._busy\n")
    found = ocpp_uses(bad)
    assert any("only connection.py" in p for p in found)
    assert any("private name" in p for p in found)
    assert any("._response_queue" in p or "_response_queue is private" in p for p in found)
    assert sorted(private_reaches(bad)) == ["bad.py:3: cp._response_queue", "bad.py:4: other._busy"]


def test_every_csms_request_has_one_handler_in_one_block(tmp_path):
    st = OcppStation("CS1", "ws://127.0.0.1:9/ocpp", None, tmp_path, None)
    assert sorted(st.routes) == [
        "ChangeAvailability", "ClearChargingProfile", "DataTransfer", "GetBaseReport",
        "GetCompositeSchedule", "GetLog", "GetReport", "GetTransactionStatus", "GetVariables",
        "RequestStartTransaction",
        "RequestStopTransaction", "Reset", "SetChargingProfile", "SetVariables", "TriggerMessage",
        "UpdateFirmware"]
    assert sorted(a for a, h in st.routes.items() if "_after_action" in h) == [
        "GetBaseReport", "GetLog", "GetReport", "Reset", "TriggerMessage", "UpdateFirmware"]

    class Twice:
        @on("Reset")
        def on_reset_again(self, **_):
            return {"status": "Rejected"}
    with pytest.raises(ValueError, match="Reset is handled by two blocks"):
        routes_of(st.provisioning, Twice())


class _Ws:
    """A WebSocket whose incoming frames the test feeds and whose outgoing frames it reads."""

    def __init__(self):
        self.incoming = asyncio.Queue()
        self.sent = []
        self.sent_event = asyncio.Event()

    async def recv(self):
        return await self.incoming.get()

    async def send(self, message):
        self.sent.append(json.loads(message))
        self.sent_event.set()

    async def next_sent(self):
        while True:
            self.sent_event.clear()
            if self.sent:
                return self.sent.pop(0)
            await self.sent_event.wait()


def test_a_csms_request_waiting_on_the_controller_does_not_hold_back_answers_to_our_calls():
    release = None

    class Block:
        @on("Reset")
        async def on_reset_slowly(self, type, **_):  # noqa: A002
            await release.wait()          # the controller has not answered yet
            return {"status": "Accepted"}

    async def go():
        nonlocal release
        release = asyncio.Event()
        ws = _Ws()
        conn = Connection("CS1", ws, "2.0.1", routes_of(Block()), response_timeout=5)
        reader = asyncio.ensure_future(conn.start())
        ws.incoming.put_nowait(json.dumps([2, "r1", "Reset", {"type": "Immediate"}]))
        beat = asyncio.ensure_future(conn.call_raw("Heartbeat", {}))
        call = await ws.next_sent()
        assert call[2] == "Heartbeat"
        ws.incoming.put_nowait(json.dumps([3, "not-ours", {"currentTime": "2026-01-01T00:00:00Z"}]))
        ws.incoming.put_nowait(json.dumps([3, call[1], {"currentTime": "2026-01-01T00:00:00Z"}]))
        answer = await asyncio.wait_for(beat, 2)     # the Reset handler is still waiting
        assert answer == {"currentTime": "2026-01-01T00:00:00Z"} and not release.is_set()
        release.set()
        assert await ws.next_sent() == [3, "r1", {"status": "Accepted"}]
        refused = asyncio.ensure_future(conn.call_raw("Heartbeat", {}))
        call = await ws.next_sent()
        ws.incoming.put_nowait(json.dumps([4, call[1], "InternalError", "db down", {}]))
        with pytest.raises(CallRefused) as e:
            await refused
        assert e.value.code == "InternalError"
        ws.incoming.put_nowait(json.dumps([2, "r2", "Authorize", {"idToken": {"idToken": "A", "type": "Central"}}]))
        unhandled = await ws.next_sent()
        assert unhandled[:3] == [4, "r2", "NotImplemented"]
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    asyncio.run(go())


def test_a_call_waiting_for_its_answer_fails_at_once_when_the_socket_dies():
    """A dead link (the keepalive aborts it) must not leave our CALL waiting for its response
    timeout: the queue sends it again on the next session straight away."""
    import websockets.exceptions

    class Dying(_Ws):
        async def recv(self):
            item = await self.incoming.get()
            if isinstance(item, BaseException):
                raise item
            return item

    async def go():
        ws = Dying()
        conn = Connection("CS1", ws, "2.0.1", {}, response_timeout=30)
        reader = asyncio.ensure_future(conn.start())
        beat = asyncio.ensure_future(conn.call_raw("Heartbeat", {}))
        await ws.next_sent()
        t0 = asyncio.get_running_loop().time()
        ws.incoming.put_nowait(websockets.exceptions.ConnectionClosedError(None, None))
        with pytest.raises(websockets.exceptions.ConnectionClosed):
            await beat
        assert asyncio.get_running_loop().time() - t0 < 1.0
        await asyncio.gather(reader, return_exceptions=True)
    asyncio.run(go())
