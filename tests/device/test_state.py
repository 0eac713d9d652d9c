"""Atomic writes, the session counter and the persisted remote-config state."""

import json
import os

import pytest

from lepton_edge.core.errors import ConfigError
from lepton_edge.device.state import ConfigState, StateStore, atomic_write


def test_atomic_write_replaces_the_file_and_leaves_no_temporaries(tmp_path):
    target = tmp_path / "state.json"
    atomic_write(target, b"one")
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    assert os.listdir(tmp_path) == ["state.json"]


def test_atomic_write_failure_keeps_the_old_content(tmp_path):
    target = tmp_path / "state.json"
    atomic_write(target, b"old")
    with pytest.raises(TypeError):
        atomic_write(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["state.json"]


def test_session_ids_increase_across_store_instances(tmp_path):
    assert StateStore(tmp_path).next_session() == 1
    assert StateStore(tmp_path).next_session() == 2  # a restart continues from the file
    store = StateStore(tmp_path)
    assert [store.next_session() for _ in range(3)] == [3, 4, 5]


def test_corrupt_session_counter_restarts_above_every_previous_id(tmp_path):
    store = StateStore(tmp_path)
    for _ in range(3):
        store.next_session()
    store.session_path.write_text("garbage\n")
    assert store.next_session() > 1_000_000_000_000  # milliseconds since 1970
    after = store.next_session()
    assert after == store.last_session()


def test_config_state_round_trip_and_bad_files(tmp_path):
    store = StateStore(tmp_path)
    assert store.load_config_state() == ConfigState()
    state = ConfigState(handled_version=4, active_version=3, config={"model": {"path": "m.onnx"}})
    store.save_config_state(state)
    assert store.load_config_state() == state
    for bad in (
        "{not json",
        json.dumps({"handled_version": 1, "active_version": 2, "config": {}}),
        json.dumps({"handled_version": 2, "active_version": 1, "config": None}),
        json.dumps([1]),
    ):
        store.config_path.write_text(bad)
        assert store.load_config_state() == ConfigState()


def test_unwritable_state_dir_is_a_clear_config_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match=r"agent\.state_dir: cannot create .*writable folder"):
        StateStore(blocker / "state")
