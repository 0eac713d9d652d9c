"""The suite's own tools: the black-hole proxy and the report writer."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from lepton_edge.fleet.protocol import TopicKind
from tests.reliability.harness import Delivery, DeviceProcess, Subscriber, account, wait_until
from tests.reliability.proxy import BlackholeProxy
from tests.reliability.report import ScenarioRecord, write_report

pytestmark = [pytest.mark.reliability, pytest.mark.integration]


class EchoServer:
    """Echoes every byte back; records whether each connection saw its peer close (EOF)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.eofs = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data)
            self.eofs += 1

    def close(self) -> None:
        self.sock.close()


def roundtrip(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    return sock.recv(4096)


def test_proxy_forwards_then_black_holes_silently_then_forwards_new_connections():
    echo = EchoServer()
    try:
        with BlackholeProxy("127.0.0.1", echo.port) as proxy:
            old = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
            assert roundtrip(old, b"hello") == b"hello"

            proxy.cut()
            old.sendall(b"lost")
            old.settimeout(0.5)
            with pytest.raises(TimeoutError):  # no answer, and no EOF either: the socket just goes quiet
                old.recv(4096)
            during = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)  # accepted, then silence
            during.sendall(b"into the void")
            during.settimeout(0.3)
            with pytest.raises(TimeoutError):
                during.recv(4096)
            old.close()  # the client gives up; the server must not hear about it
            wait_until(lambda: proxy.discarded_bytes >= len(b"lost" + b"into the void"), 2, "bytes discarded")
            time.sleep(0.2)  # time enough for a close to travel, if the proxy passed it on
            assert echo.eofs == 0

            proxy.resume()
            new = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
            assert roundtrip(new, b"back") == b"back"
            during.settimeout(0.3)
            with pytest.raises(TimeoutError):  # a black-holed connection stays one
                during.recv(4096)
            assert [cut for _, cut in proxy.accepted] == [False, True, False]
            new.close()
            wait_until(lambda: echo.eofs == 1, 2, "a forwarding connection passes the close on")
            during.close()
    finally:
        echo.close()


def test_report_has_a_row_per_scenario_and_the_json_holds_everything(tmp_path):
    passed = ScenarioRecord("1 broker SIGKILL", "kill -9 mosquitto")
    passed.outcome = "passed"
    passed.set_accounting(
        {"durable_sent": 10, "durable_delivered": 10, "durable_lost": 0, "duplicates": 2, "telemetry_sent": 3}
    )
    passed.recovery_s, passed.recovery_means = 0.5, "restart to first message"
    passed.note("reconnected | fine")
    gap = ScenarioRecord("0 known gap", "something")
    gap.outcome, gap.failure = "known gap (xfail)", "not done yet"

    json_path, md_path = write_report([passed, gap], tmp_path)
    markdown = md_path.read_text()
    assert "| 1 broker SIGKILL | passed | 10 | 10 | 0 | 2 | 0.50 |" in markdown
    assert "| 0 known gap | known gap (xfail) | - | - | - | - | - |" in markdown
    assert markdown.index("| 0 known gap") < markdown.index("| 1 broker SIGKILL")  # sorted by name
    assert "reconnected | fine" in markdown and "not done yet" in markdown
    data = json.loads(json_path.read_text())
    assert [s["name"] for s in data["scenarios"]] == ["0 known gap", "1 broker SIGKILL"]
    assert data["scenarios"][1]["metrics"] == {"telemetry_sent": 3}


def test_accounting_finds_lost_duplicated_and_unledgered_messages(tmp_path):
    device = DeviceProcess(tmp_path, {"device_id": "d", "agent": {"state_dir": str(tmp_path)}})
    ledger = [
        {"event": "put", "uid": "x-1", "topic": "lepton/v1/devices/d/results", "priority": "high", "t": 1},
        {"event": "put", "uid": "x-2", "topic": "lepton/v1/devices/d/telemetry", "priority": "low", "t": 2},
        {"event": "put", "uid": "x-3", "topic": "lepton/v1/devices/d/events", "priority": "high", "t": 3},
        {"event": "put_failed", "topic": "lepton/v1/devices/d/results", "priority": "high", "t": 4},
        {"event": "put", "uid": "x-5", "topic": "lepton/v1/devices/d/results", "priority": "high", "t": 5},
    ]
    device.ledger_path.write_text("".join(json.dumps(r) + "\n" for r in ledger) + '{"event": "put", "ui')
    subscriber = Subscriber(1883, "d")  # never started: deliveries are fed by hand
    for uid, kind, payload in [
        ("x-1", TopicKind.RESULT, b"r1"),
        ("x-1", TopicKind.RESULT, b"r1"),  # a duplicate, identifiable
        ("x-2", TopicKind.TELEMETRY, b"t2"),
        ("x-5", TopicKind.RESULT, b"r5"),
        ("x-5", TopicKind.RESULT, b"other"),  # same id, other payload: not identifiable
        ("x-6", TopicKind.RESULT, b"r6"),  # stored just before a SIGKILL cut its ledger line
        (None, TopicKind.BIRTH, b"b"),
    ]:
        subscriber.deliveries.append(Delivery(f"lepton/v1/devices/d/{kind.value}", kind, uid, payload, 0.0))

    result = account(device, subscriber)
    assert (result.durable_sent, result.durable_delivered, result.durable_lost) == (3, 2, ["x-3"])
    assert result.duplicates == 2 and result.conflicting_duplicates == ["x-5"]
    assert result.unledgered == 1
    assert (result.telemetry_sent, result.telemetry_delivered) == (1, 1)
    assert result.put_failures == {"high": 1}
