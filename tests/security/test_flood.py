"""A 10 s flood from one device on its own telemetry topic, through the production broker (deploy/mosquitto/:
mutual TLS, the ACL, the per-client queue limits) into a real scheduler (SQLite), while another device sends
its telemetry: how much of the other device's telemetry is stored, how late, and whether it is ever marked
offline (issue #12, item 4; target: >= 95 % stored, never offline).

The flooder is ``mosquitto_pub -l`` (C, one client with the device's own certificate) fed by ``yes`` and
killed after 10 s: the highest rate one client reaches here. The broker's own counters ($SYS, readable by
the scheduler's identity) say how many messages it received and dropped. Figures go to the security report
and docs/reliability.md ("Floods").
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest

from lepton_edge.fleet.protocol import birth_topic, death_topic, encode, telemetry_topic
from lepton_edge.scheduler.service import SchedulerService
from lepton_edge.scheduler.simulator import DeviceSpec, SimDevice
from tests.support.production_broker import SCHEDULER_PASSWORD, ProductionBroker
from tests.support.scheduler import fast_config, wait_until

pytestmark = pytest.mark.integration

FLOOD_S = 10.0
OTHER_RATE_HZ = 2.0
"""The other device's telemetry rate (a device's default interval is longer: this is the harder case)."""
HEARTBEAT_TIMEOUT_S = 3.0
TARGET_STORED = 0.95
RECEIVED = "$SYS/broker/publish/messages/received"
DROPPED = "$SYS/broker/publish/messages/dropped"


class BrokerCounters:
    """The broker's $SYS publish counters, read as the scheduler's identity (published every sys_interval,
    10 s, when they changed)."""

    def __init__(self, broker: ProductionBroker, clients) -> None:
        self.client = clients("scheduler", cafile=None, cert=None, port=broker.local_port, username="scheduler",
                              password=SCHEDULER_PASSWORD)  # fmt: skip
        self.client.connected()
        self.latest: dict[str, tuple[float, int]] = {}
        self.client.client.on_message = lambda _c, _u, m: self.latest.update({m.topic: (time.time(), int(m.payload))})
        self.client.subscribe(RECEIVED, DROPPED)

    def after(self, when: float) -> dict[str, int]:
        """The counters once the received count was published after ``when``."""
        wait_until(lambda: self.latest.get(RECEIVED, (0.0, 0))[0] > when and DROPPED in self.latest, 25,
                   "the broker's $SYS counters")  # fmt: skip
        return {topic: value for topic, (_, value) in self.latest.items()}


def _flood(broker: ProductionBroker, certs: Path, device_id: str, payload: bytes, qos: int) -> None:
    """Flood ``device_id``'s telemetry topic with ``mosquitto_pub -l`` for FLOOD_S (then killed)."""
    key = certs / "clients" / device_id
    publisher = (
        f"mosquitto_pub -h 127.0.0.1 -p {broker.port} --cafile {certs / 'ca.crt'} --cert {key}.crt "
        f"--key {key}.key --insecure -V mqttv5 -q {qos} -t {telemetry_topic(device_id)} -l"
    )
    script = f"timeout -s KILL {FLOOD_S} {publisher} < <(yes '{payload.decode()}')"
    subprocess.run(["bash", "-c", script], capture_output=True, timeout=FLOOD_S + 30)


@pytest.mark.parametrize("qos", [0, 1])
def test_a_flood_from_one_device_leaves_another_devices_telemetry_and_liveness_alone(
    production_broker: ProductionBroker, pki: dict[str, Path], clients, tmp_path: Path, attack, qos: int
) -> None:
    rec = attack(f"10 s telemetry flood from one device at QoS {qos} (production broker)", "fleet: flood isolation")
    config = fast_config(
        production_broker.local_port,
        f"sqlite:///{tmp_path}/fleet.db",
        mqtt={"username": "scheduler", "password": SCHEDULER_PASSWORD},
        heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S,
        ingest={"event_interval_s": 10.0},  # the default: a rejection is an event at most every 10 s
    )
    counters = BrokerCounters(production_broker, clients)
    service = SchedulerService(config).start()
    try:
        assert service.wait_connected(5), service.mqtt.last_error
        other = SimDevice(DeviceSpec("cam-b"))
        other.new_session()
        device = clients("cam-b", will=(death_topic("cam-b"), encode(other.death())))
        device.connected()
        device.publish(birth_topic("cam-b"), encode(other.birth()), retain=True)
        wait_until(lambda: (d := service.store.get_device("cam-b")) is not None and d.online, 10, "cam-b online")
        flooder = SimDevice(DeviceSpec("cam-a"))
        flooder.new_session()
        payload = flooder.telemetry_payload(time.time(), 1.0)

        before = counters.after(time.time() - 60)
        sent_by_other = 0
        stop_other = threading.Event()

        def other_device() -> None:  # keeps sending until everything is measured, so it never goes silent
            nonlocal sent_by_other
            while not stop_other.wait(1 / OTHER_RATE_HZ):
                device.client.publish(telemetry_topic("cam-b"), other.telemetry_payload(time.time(), 0.5), qos=1)
                sent_by_other += 1

        sender = threading.Thread(target=other_device)
        sender.start()
        started = time.time()
        _flood(production_broker, pki["certs"], "cam-a", payload, qos)
        ended = time.time()
        after = counters.after(ended)
        stop_other.set()
        sender.join()
        wait_until(lambda: service.writer.backlog == 0 and len(service.control) == 0, 30, "ingestion drained")
        rows = service.store.telemetry_history("cam-b", since=started - 1, limit=100_000)
        delays = [row["ts"] - row["data"]["timestamp"] for row in rows]
        offline_marks = [
            e for e in service.store.list_events(limit=10_000) if e.kind == "device.offline" and e.device_id == "cam-b"
        ]
        flood_received = after[RECEIVED] - before[RECEIVED] - sent_by_other  # the other's, sent since, over-subtracted
        rec.figures.update(
            flood_messages=flood_received,
            flood_rate_hz=round(flood_received / FLOOD_S),
            broker_dropped=after[DROPPED] - before[DROPPED],
            scheduler_received=service.counts["messages"],
            isolations=service.counts["flood_isolations"],
            other_sent=sent_by_other,
            other_stored=len(rows),
            other_stored_pct=round(100 * len(rows) / sent_by_other, 1),
            other_max_delay_s=round(max(delays, default=0.0), 3),
            other_offline_marks=len(offline_marks),
        )
        assert not offline_marks, f"cam-b was marked offline during the flood: {rec.figures}"
        assert len(rows) >= TARGET_STORED * sent_by_other, f"cam-b's telemetry was lost: {rec.figures}"
        assert service.counts["flood_isolations"] >= 1, f"the flooder was never isolated: {rec.figures}"
        rec.refused_because(
            "the scheduler's token bucket rejected the flood (ingest.device_rate_hz) and, past "
            "ingest.flood_threshold rejections in 1 s, isolated the flooder at the broker (per-device "
            f"subscriptions for ingest.flood_quarantine_s): {len(rows)}/{sent_by_other} of the other device's "
            "telemetry stored, never offline"
        )
    finally:
        service.stop()


def test_another_device_cannot_keep_a_silent_device_alive_with_forged_telemetry(
    production_broker: ProductionBroker, clients, tmp_path: Path, attack
) -> None:
    rec = attack("forged telemetry keeps a silent device alive (production broker)", "fleet: liveness")
    config = fast_config(
        production_broker.local_port,
        f"sqlite:///{tmp_path}/fleet.db",
        mqtt={"username": "scheduler", "password": SCHEDULER_PASSWORD},
        heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S,
    )
    service = SchedulerService(config).start()
    try:
        assert service.wait_connected(5), service.mqtt.last_error
        victim = SimDevice(DeviceSpec("cam-b"))
        victim.new_session()
        silent = clients("cam-b", will=(death_topic("cam-b"), encode(victim.death())))
        silent.connected()  # stays connected (no will) and says nothing more: hung
        silent.publish(birth_topic("cam-b"), encode(victim.birth()), retain=True)
        wait_until(lambda: (d := service.store.get_device("cam-b")) is not None and d.online, 10, "cam-b online")
        forger = clients("cam-a").connected()
        started = time.time()
        forged = 0
        while time.time() - started < 2 * HEARTBEAT_TIMEOUT_S:  # the victim's own session and sequence
            forger.client.publish(telemetry_topic("cam-b"), victim.telemetry_payload(time.time(), 0.2), qos=1)
            forged += 1
            time.sleep(0.1)
        device = service.store.get_device("cam-b")
        assert device is not None and not device.online, "forged telemetry kept a silent device online"
        assert service.counts["telemetry"] == 0 and service.rejected["flood"] == 0, "a forged message got through"
        rec.figures.update(forged=forged, received=service.counts["telemetry"], liveness_timeouts=service.counts[
            "liveness_timeouts"])  # fmt: skip
        rec.refused_because(
            "broker ACL: a device publishes only on its own topics, so the forgery never reached the scheduler; "
            f"the silent device was marked offline after heartbeat_timeout_s ({HEARTBEAT_TIMEOUT_S:g} s)"
        )
    finally:
        service.stop()
