"""Issue #14, part 5: attacks on clip fetches. A real device agent (idle, with a clip folder) answers clips.read on a
real broker; each request that reaches for anything but a complete clip of that folder must be refused with a
reason, and the API lets only operators fetch, auditing every attempt."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lepton_edge.device.agent import DeviceAgent
from lepton_edge.scheduler.api import serve
from lepton_edge.scheduler.clips import CommandClient, CommandError
from lepton_edge.scheduler.stores import open_store
from tests.device.helpers import idle_config, wait_until
from tests.device.test_clip_commands import write_clip
from tests.scheduler.test_clips import make_fetcher
from tests.scheduler.test_clips_api import ClipService
from tests.support.api_client import ApiClient, make_token

pytestmark = pytest.mark.integration

AREA = "clip fetches"


@pytest.fixture
def device(tmp_path: Path, mqtt_broker: Any, make_mqtt_client: Any, unique: str) -> Iterator[dict[str, Any]]:
    """An idle agent serving ``<tmp>/clips`` (one complete clip ``evt``, one in progress, a symbolic link and a
    hard link to its own state), and a requester with the scheduler's command client."""
    device_id = f"clipdev-{unique}"
    clips = tmp_path / "clips"
    write_clip(clips, "evt", b"a real clip")
    (clips / "wip.mp4.part").write_bytes(b"still being written")
    agent = DeviceAgent(idle_config(tmp_path, mqtt_broker.port, device_id), clip_folders=[clips])
    agent.start()
    assert agent.client.wait_connected(10) and agent.client.wait_subscribed(5)
    secret = agent.store.dir / "secret-state.json"
    secret.write_text('{"token": "device secret"}')
    (clips / "leak.mp4").symlink_to(secret)
    (clips / "leak.json").write_text("{}")
    os.link(secret, clips / "hard.mp4")
    (clips / "hard.json").write_text("{}")
    requester = make_mqtt_client(mqtt_broker.port, f"attacker-{unique}", session_expiry_s=0)
    commands = CommandClient(requester, f"op-{unique}")
    requester.start()
    assert requester.wait_connected(10) and requester.wait_subscribed(5)
    try:
        yield {"agent": agent, "commands": commands, "device_id": device_id, "state": agent.store.dir}
    finally:
        agent.stop()


ATTACKS = [
    ("clips.read of ../state/… (path traversal)", {"id": "../state/secret-state"}, "never a path"),
    ("clips.read of an absolute path", {"id": "/etc/passwd"}, "never a path"),
    ("clips.read of a symbolic link to the agent's state", {"id": "leak"}, "not a plain file"),
    ("clips.read of a hard link to the agent's state", {"id": "hard"}, "one link"),
    ("clips.read of a clip still being written (.part)", {"id": "wip"}, "not found among the complete clips"),
    ("clips.read naming the .part file", {"id": "wip.mp4.part"}, ".part files are clips being written"),
    ("clips.read of 10 MiB in one answer", {"id": "evt", "length": 10 << 20}, "'length' must be"),
    ("clips.read at a negative offset", {"id": "evt", "offset": -5}, "'offset' must be"),
    ("clips.read with a folder argument", {"id": "evt", "folder": "/"}, "unknown argument"),
]


@pytest.mark.parametrize(("name", "args", "reason"), ATTACKS, ids=[a[0] for a in ATTACKS])
def test_clip_reads_outside_the_complete_clips_are_refused(
    device: dict[str, Any], attack: Any, name: str, args: dict[str, Any], reason: str
) -> None:
    rec = attack(name, AREA)
    with pytest.raises(CommandError) as refused:
        device["commands"].call(device["device_id"], "clips.read", args, timeout_s=10)
    assert reason in str(refused.value) and not refused.value.transient, refused.value
    assert "device secret" not in str(refused.value)
    rec.refused_because(str(refused.value))
    # the agent still serves its real clip afterwards
    chunk = device["commands"].call(device["device_id"], "clips.read", {"id": "evt"}, timeout_s=10)
    assert base64.b64decode(chunk["data"]) == b"a real clip"


def test_a_list_of_every_file_is_refused(device: dict[str, Any], attack: Any) -> None:
    rec = attack("clips.list of 100000 entries", AREA)
    with pytest.raises(CommandError) as refused:
        device["commands"].call(device["device_id"], "clips.list", {"limit": 100_000}, timeout_s=10)
    assert "'limit' must be" in str(refused.value)
    rec.refused_because(str(refused.value))
    listed = device["commands"].call(device["device_id"], "clips.list", {}, timeout_s=10)
    assert [c["id"] for c in listed["clips"]] == ["evt"]  # no link, no part


def test_viewers_and_strangers_cannot_fetch_and_every_attempt_is_audited(
    tmp_path: Path, device: dict[str, Any], mqtt_broker: Any, make_mqtt_client: Any, attack: Any, unique: str
) -> None:
    device_id = device["device_id"]
    fetcher = make_fetcher(make_mqtt_client, mqtt_broker.port, tmp_path / "sched", f"r-{unique}")
    try:
        with open_store(f"sqlite:///{tmp_path / 'fleet.db'}") as store:
            store.device_birth(device_id, 1, {"accelerator": "cpu"}, time.time())
            with serve(ClipService(store, fetcher), "127.0.0.1", 0) as server:
                path = f"/api/devices/{device_id}/clips/evt/fetch"
                since = time.time() - 1
                viewer_rec = attack("viewer token fetches a clip", AREA)
                status, answer = ApiClient(server.url, make_token(store, "viewer")).call("POST", path)
                assert status == 403
                viewer_rec.refused_because(answer["detail"])
                anonymous_rec = attack("anonymous clip fetch", AREA)
                status, answer = ApiClient(server.url).call("POST", path)
                assert status == 401
                anonymous_rec.refused_because(answer["detail"])
                assert fetcher.jobs() == []  # nothing was fetched for them
                # an operator may: the real agent's clip arrives whole
                assert ApiClient(server.url, make_token(store, "operator")).call("POST", path)[0] in (200, 202)
                wait_until(lambda: (j := fetcher.job(device_id, "evt")) is not None and j.state == "complete")
                assert (tmp_path / "sched" / device_id / "evt.mp4").read_bytes() == b"a real clip"
                entries = ApiClient(server.url, make_token(store, "admin")).get(f"/api/audit?since={since}")[1]
    finally:
        fetcher.stop(2)
    audited = [(e["role"], e["status"]) for e in entries if e["action"] == f"POST {path}"]
    assert [status for _, status in audited][:2] == [403, 401] and audited[1][0] is None
    assert audited[2][0] == "operator" and audited[2][1] in (200, 202)
