"""Issue #14, item 5: a remote ``clips`` section that tries to leave its sandbox (a folder outside the allowed ones,
``..`` and symlink tricks, the agent's own state, a huge quota) is refused by the device's remote policy, naming the
field and the rule; a legitimate one passes.

The clips section is not yet part of the remote device config, so the policy function is called as the agent will
call it once it is (``check_remote_clips``), without a broker.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lepton_edge.config.clips import ClipsConfig
from lepton_edge.config.device import AgentConfig, RemotePolicyConfig
from lepton_edge.device.remote_policy import check_remote_clips
from tests.device.helpers import agent_config

DEFAULT_MAX_REMOTE_CLIP_BYTES = RemotePolicyConfig().max_clip_bytes

AREA = "clips (remote config)"


@pytest.fixture
def agent(tmp_path: Path) -> AgentConfig:
    config = agent_config(tmp_path / "device", Path("unused.onnx"), 1883, "cam-a")
    (tmp_path / "device").mkdir(exist_ok=True)
    assert config.agent is not None
    return config.agent


def clips(folder: Path | str, **fields: Any) -> ClipsConfig:
    return ClipsConfig.model_validate({"enabled": True, "folder": str(folder), **fields})


def test_a_clip_folder_of_its_own_inside_the_allowed_folders_passes(agent: AgentConfig, tmp_path: Path) -> None:
    assert check_remote_clips(clips(tmp_path / "device" / "clips" / "cam-1", max_bytes=1 << 30), agent, "doc") == []


@pytest.mark.parametrize(
    ("name", "folder", "rule"),
    [
        ("clip folder outside the allowed folders", "/var/lib/other", "inside the allowed folders"),
        ("clip folder escaping with ..", "{device}/clips/../../escape", "inside the allowed folders"),
        ("clip folder is the allowed folder itself", "{device}", "folder of their own"),
        ("clip folder holds the agent's state", "{device}/state-cam-a/..", "folder of their own"),
        ("clip folder is the agent's state folder", "{device}/state-cam-a", "the agent's own state"),
        ("clip folder below the agent's state files", "{device}/state-cam-a/artifacts/x", "agent's own state"),
        ("clip folder through a symlink out", "{device}/link/clips", "inside the allowed folders"),
    ],
)
def test_clip_folders_that_leave_the_sandbox_are_refused(
    agent: AgentConfig, tmp_path: Path, attack: Any, name: str, folder: str, rule: str
) -> None:
    rec = attack(name, AREA)
    (tmp_path / "outside").mkdir()
    (tmp_path / "device" / "link").symlink_to(tmp_path / "outside")
    problems = check_remote_clips(clips(folder.format(device=tmp_path / "device")), agent, "doc")
    assert problems and all("clips.folder" in p and "refused by the remote policy" in p for p in problems)
    assert any(rule in p for p in problems), problems
    rec.refused_because(problems[0])


def test_a_huge_clip_quota_is_refused(agent: AgentConfig, tmp_path: Path, attack: Any) -> None:
    rec = attack("clip quota of 1 TiB (fills the device's disk)", AREA)
    problems = check_remote_clips(clips(tmp_path / "device" / "clips", max_bytes=1 << 40), agent, "doc")
    assert len(problems) == 1 and "clips.max_bytes" in problems[0] and str(DEFAULT_MAX_REMOTE_CLIP_BYTES) in problems[0]
    rec.refused_because(problems[0])
    rec.figures["quota_limit_bytes"] = DEFAULT_MAX_REMOTE_CLIP_BYTES


@pytest.mark.parametrize(
    "fields",
    [{"pre_s": 61}, {"post_s": 1e9}, {"max_bytes": 1 << 50}, {"retention_s": float("inf")}, {"ring_max_bytes": 1 << 40},
     {"pre_s": 30, "post_s": 60, "max_clip_s": 60}, {"folder": "/x", "path": "/etc"}],
)
def test_unbounded_numbers_fail_the_schema(fields: dict[str, Any], attack: Any) -> None:
    rec = attack(f"clips with {sorted(fields)} out of bounds", AREA)
    with pytest.raises(ValueError) as err:
        ClipsConfig.model_validate({"enabled": True, **fields})
    rec.refused_because(str(err.value).splitlines()[1] if "\n" in str(err.value) else str(err.value))
