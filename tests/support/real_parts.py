"""Real programs the tests start or call (mosquitto, PostgreSQL, Chromium, openssl, shellcheck).

Where one is missing its tests skip on a developer's machine, but fail where the real parts are required:
in CI (``$CI`` set, as CI services do) or with ``LEPTON_REQUIRE_REAL_PARTS=1`` (``.ci/run`` sets it), so a
machine without them cannot pass green. Hardware-only skips (GPU, TensorRT, CUDA, GStreamer) do not come here.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

REQUIRE_ENV = "LEPTON_REQUIRE_REAL_PARTS"


def real_parts_required() -> bool:
    """True in CI (``$CI`` set and not false) or with ``$LEPTON_REQUIRE_REAL_PARTS=1``."""
    ci = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
    return ci or os.environ.get(REQUIRE_ENV) == "1"


def missing_real_part(reason: str) -> NoReturn:
    """Skip the calling test because a real part is missing, or fail it where real parts are required."""
    if real_parts_required():
        pytest.fail(f"{reason} (required here: $CI or ${REQUIRE_ENV}=1 is set)", pytrace=False)
    pytest.skip(reason)
