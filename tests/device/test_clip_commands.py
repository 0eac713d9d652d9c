"""clips.list and clips.read over real files laid out as the clip recorder writes them."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from lepton_edge.core.errors import ConfigError
from lepton_edge.device.clip_commands import MAX_CHUNK_BYTES, MAX_LIST_LIMIT, ClipCommands, ClipFolders, ClipRefused
from lepton_edge.fleet.protocol import MAX_PAYLOAD_BYTES, CommandResponse, encode
from lepton_edge.runtime.clips.store import ClipStore


def write_clip(folder: Path, clip_id: str, data: bytes, *, end_wall: float = 1000.0, **meta: Any) -> Path:
    """A complete clip as the recorder leaves it: ``<id>.mp4`` and ``<id>.json`` beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{clip_id}.mp4").write_bytes(data)
    metadata = {
        "id": clip_id,
        "stream": "cam0",
        "start_capture": 10.0,
        "end_capture": 20.0,
        "start_wall": end_wall - 10,
        "end_wall": end_wall,
        "event_ids": ["a" + "0" * 31],
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "codec": "h264",
        "reencoded": False,
        **meta,
    }
    (folder / f"{clip_id}.json").write_text(json.dumps(metadata))
    return folder / f"{clip_id}.mp4"


def read_all(commands: ClipCommands, clip_id: str, length: int = MAX_CHUNK_BYTES) -> tuple[bytes, list[dict]]:
    out, answers, offset = b"", [], 0
    while True:
        answer = commands.read({"id": clip_id, "offset": offset, "length": length})
        answers.append(answer)
        out += base64.b64decode(answer["data"])
        offset += answer["length"]
        if answer["eof"]:
            return out, answers


def test_list_is_newest_first_bounded_and_metadata_only(tmp_path: Path) -> None:
    clips = tmp_path / "clips"
    for i in range(5):
        write_clip(clips, f"clip-{i}", os.urandom(100 + i), end_wall=1000.0 + i)
    (clips / "clip-9.mp4.part").write_bytes(b"partial")  # being written: not listed
    (clips / "clip-8.mp4").write_bytes(b"no metadata yet")  # not renamed into place as a whole: not listed
    commands = ClipCommands.for_folders([clips])
    answer = commands.list({"limit": 3})
    assert [c["id"] for c in answer["clips"]] == ["clip-4", "clip-3", "clip-2"]
    first = answer["clips"][0]
    assert first["bytes"] == 104 and first["stream"] == "cam0" and first["codec"] == "h264"
    assert first["event_ids"] == ["a" + "0" * 31] and first["event_count"] == 1 and "data" not in first
    assert len(commands.list({})["clips"]) == 5
    with pytest.raises(ClipRefused, match="limit"):
        commands.list({"limit": MAX_LIST_LIMIT + 1})
    with pytest.raises(ClipRefused, match="unknown argument"):
        commands.list({"folder": "/etc"})


def test_a_clip_read_in_chunks_is_byte_identical_and_every_answer_fits_the_payload_limit(tmp_path: Path) -> None:
    data = os.urandom(3 * MAX_CHUNK_BYTES + 12345)
    write_clip(tmp_path / "clips", "evt-1", data)
    commands = ClipCommands.for_folders([tmp_path / "clips"])
    out, answers = read_all(commands, "evt-1")
    assert out == data and len(answers) == 4
    assert {a["sha256"] for a in answers} == {hashlib.sha256(data).hexdigest()}
    assert {a["size"] for a in answers} == {len(data)}
    for answer in answers:  # a full chunk encodes well under the limit
        assert len(encode(CommandResponse(name="clips.read", status="ok", result=answer))) < MAX_PAYLOAD_BYTES
    # a length over the cap is refused; offset == size is an empty, final chunk
    with pytest.raises(ClipRefused, match="length"):
        commands.read({"id": "evt-1", "offset": 0, "length": MAX_CHUNK_BYTES + 1})
    end = commands.read({"id": "evt-1", "offset": len(data)})
    assert end["length"] == 0 and end["eof"] is True
    with pytest.raises(ClipRefused, match="past its end"):
        commands.read({"id": "evt-1", "offset": len(data) + 1})
    with pytest.raises(ClipRefused, match="offset"):
        commands.read({"id": "evt-1", "offset": -1})


def test_a_changed_clip_gets_a_new_hash(tmp_path: Path) -> None:
    path = write_clip(tmp_path, "c", b"first")
    commands = ClipCommands.for_folders([tmp_path])
    first = commands.read({"id": "c"})["sha256"]
    path.unlink()
    path.write_bytes(b"second version")
    assert commands.read({"id": "c"})["sha256"] == hashlib.sha256(b"second version").hexdigest() != first


def test_clips_are_looked_up_in_every_folder(tmp_path: Path) -> None:
    write_clip(tmp_path / "a", "one", b"1" * 10)
    write_clip(tmp_path / "b", "two", b"2" * 20)
    commands = ClipCommands.for_folders([tmp_path / "a", tmp_path / "b"])
    assert base64.b64decode(commands.read({"id": "two"})["data"]) == b"2" * 20
    assert {c["id"] for c in commands.list({})["clips"]} == {"one", "two"}


@pytest.mark.parametrize(
    "clip_id",
    ["../state/outbox", "/etc/passwd", "..", ".hidden", "a/b", "", "x" * 129, "evt.mp4.part", 7, None, "c\x00"],
)
def test_ids_that_are_not_clip_names_are_refused(tmp_path: Path, clip_id: Any) -> None:
    write_clip(tmp_path / "clips", "evt", b"data")
    commands = ClipCommands.for_folders([tmp_path / "clips"])
    with pytest.raises(ClipRefused, match="refused"):
        commands.read({"id": clip_id})


def test_symlinks_hard_links_and_parts_are_not_served(tmp_path: Path) -> None:
    clips, state = tmp_path / "clips", tmp_path / "state"
    state.mkdir()
    (state / "secret.db").write_bytes(b"agent state")
    write_clip(clips, "real", b"clip bytes")
    (clips / "link.mp4").symlink_to(state / "secret.db")
    (clips / "link.json").write_text("{}")
    os.link(state / "secret.db", clips / "hard.mp4")
    (clips / "hard.json").write_text("{}")
    (clips / "wip.mp4.part").write_bytes(b"partial")
    commands = ClipCommands.for_folders([clips], forbidden=[state])
    with pytest.raises(ClipRefused, match="not a plain file"):
        commands.read({"id": "link"})
    with pytest.raises(ClipRefused, match="one link"):
        commands.read({"id": "hard"})
    with pytest.raises(ClipRefused, match="not found"):
        commands.read({"id": "wip"})
    assert [c["id"] for c in commands.list({})["clips"]] == ["real"]


def test_a_clip_folder_inside_the_state_dir_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="agent's own files"):
        ClipFolders([tmp_path / "state" / "clips"], forbidden=[tmp_path / "state"])
    with pytest.raises(ConfigError, match="no clip folder"):
        ClipFolders([])


def test_the_recorders_clip_store_is_served(tmp_path: Path) -> None:
    store = ClipStore(tmp_path / "store", max_bytes=1 << 20, retention_s=3600)
    data = os.urandom(5000)
    store.path("rec-1").write_bytes(data)
    meta = {"id": "rec-1", "stream": "door", "end_wall": time.time(), "bytes": len(data), "event_ids": []}
    store.commit("rec-1", meta)
    commands = ClipCommands.for_stores([store])
    assert [c["id"] for c in commands.list({})["clips"]] == ["rec-1"]
    out, _ = read_all(commands, "rec-1")
    assert out == data
