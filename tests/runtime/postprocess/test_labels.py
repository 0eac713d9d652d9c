"""Label loading (lepton_edge/runtime/labels.py): files, lists and model metadata."""

from __future__ import annotations

import logging

import pytest

from lepton_edge.core.errors import ConfigError
from lepton_edge.runtime.labels import labels_from_metadata, load_labels


def test_file_one_label_per_line(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_bytes("\ufeffperson\r\n  bicycle \n\n car\n\n".encode())
    assert load_labels(path) == ("person", "bicycle", "car")
    assert load_labels(str(path)) == ("person", "bicycle", "car")


def test_list_and_none():
    assert load_labels(["cat", " dog "]) == ("cat", "dog")
    assert load_labels(None) == ()


def test_missing_file_names_path_and_fix(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(ConfigError) as err:
        load_labels(missing)
    message = str(err.value)
    assert str(missing) in message and "not found" in message and "model.labels" in message


def test_directory_empty_file_and_binary(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        load_labels(tmp_path)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(ConfigError, match="labels file is empty"):
        load_labels(empty)
    binary = tmp_path / "labels.bin"
    binary.write_bytes(b"\xff\xfe\x00\x80junk")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_labels(binary)


def test_ultralytics_names_dict_literal():
    names = "{0: 'person', 1: 'bicycle', 2: 'car'}"
    assert labels_from_metadata({"names": names}) == ("person", "bicycle", "car")
    # JSON-style string keys and an older list form.
    assert labels_from_metadata({"names": '{"0": "a", "1": "b"}'}) == ("a", "b")
    assert labels_from_metadata({"names": "['x', 'y']"}) == ("x", "y")
    # Ids that are never named print as the id, like Detections.label does.
    assert labels_from_metadata({"names": "{1: 'b', 0: 'a', 3: 'd'}"}) == ("a", "b", "2", "d")


def test_lepton_labels_json_wins_over_names():
    meta = {"lepton.labels": '["one", "two"]', "names": "{0: 'other'}"}
    assert labels_from_metadata(meta) == ("one", "two")


def test_no_labels_in_metadata():
    assert labels_from_metadata({}) == ()
    assert labels_from_metadata({"task": "detect"}) == ()


@pytest.mark.parametrize(
    "names",
    [
        "{0: 'person', 1: 'bicycle'",  # truncated
        "person, bicycle",  # not a literal
        "42",
        "{}",
        "{'a': 'person'}",  # non-integer id
        "{-1: 'x'}",
        "{1.5: 'x'}",
        "{10**9: 'x'}",  # an expression, not a literal
        "{1000000000: 'x'}",  # absurd id: refused rather than allocated
    ],
)
def test_malformed_names_give_empty_and_warn(names, caplog):
    with caplog.at_level(logging.WARNING, logger="lepton_edge.runtime.labels"):
        assert labels_from_metadata({"names": names}) == ()
    assert "'names'" in caplog.text and "ignoring it" in caplog.text


def test_names_are_never_evaluated(tmp_path):
    marker = tmp_path / "evaluated"
    code = f"{{0: open({str(marker)!r}, 'w').write('x')}}"
    assert labels_from_metadata({"names": code}) == ()
    assert not marker.exists()


def test_malformed_lepton_labels_falls_back_to_names(caplog):
    with caplog.at_level(logging.WARNING, logger="lepton_edge.runtime.labels"):
        meta = {"lepton.labels": "[1, 2]", "names": "{0: 'person'}"}
        assert labels_from_metadata(meta) == ("person",)
        assert labels_from_metadata({"lepton.labels": "not json"}) == ()
    assert caplog.text.count("'lepton.labels' is not a JSON list of strings") == 2
