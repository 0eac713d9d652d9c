"""deploy/make-certs.sh: what it issues (checked with openssl), idempotence, and its error messages."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.real_parts import missing_real_part

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "make-certs.sh"


@pytest.fixture(autouse=True)
def _openssl() -> None:
    if shutil.which("openssl") is None:
        missing_real_part("openssl is not installed (apt-get install openssl)")


def make_certs(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), "--out", str(out), *args], capture_output=True, text=True,
                          timeout=60)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def x509(cert: Path, *args: str) -> str:
    return subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", *args], capture_output=True,
                          text=True, check=True).stdout


def verifies(out: Path, cert: Path, purpose: str) -> bool:
    result = subprocess.run(["openssl", "verify", "-CAfile", str(out / "ca.crt"), "-purpose", purpose, str(cert)],
                            capture_output=True, text=True)
    return result.returncode == 0


def test_broker_certificate_defaults_to_localhost(tmp_path: Path) -> None:
    ok(make_certs(tmp_path, "broker"))
    san = x509(tmp_path / "broker.crt", "-ext", "subjectAltName")
    assert "DNS:localhost" in san and "IP Address:127.0.0.1" in san
    assert verifies(tmp_path, tmp_path / "broker.crt", "sslserver")
    assert not verifies(tmp_path, tmp_path / "broker.crt", "sslclient")
    assert (tmp_path / "ca.key").stat().st_mode & 0o077 == 0
    assert (tmp_path / "broker.key").stat().st_mode & 0o077 == 0


def test_device_certificates_carry_the_device_id(tmp_path: Path) -> None:
    ok(make_certs(tmp_path, "device", "cam-north-01", "dock.2"))
    for device_id in ("cam-north-01", "dock.2"):
        cert = tmp_path / "clients" / f"{device_id}.crt"
        assert f"CN = {device_id}" in x509(cert, "-subject")
        assert verifies(tmp_path, cert, "sslclient")
        assert not verifies(tmp_path, cert, "sslserver")
    ok(make_certs(tmp_path, "scheduler"))
    assert "CN = scheduler" in x509(tmp_path / "clients" / "scheduler.crt", "-subject")


def test_reruns_keep_the_ca_and_valid_certificates(tmp_path: Path) -> None:
    ok(make_certs(tmp_path, "broker", "mqtt.example.com", "10.0.0.5"))
    ok(make_certs(tmp_path, "device", "cam-a"))
    files = ["ca.crt", "ca.key", "broker.crt", "broker.key", "clients/cam-a.crt", "clients/cam-a.key"]
    before = {name: (tmp_path / name).read_bytes() for name in files}

    assert "kept" in ok(make_certs(tmp_path, "broker", "mqtt.example.com", "10.0.0.5"))
    assert "kept" in ok(make_certs(tmp_path, "device", "cam-a"))
    ok(make_certs(tmp_path, "ca"))
    assert {name: (tmp_path / name).read_bytes() for name in files} == before

    # New names for the broker: a new broker certificate from the same CA.
    assert "re-issuing" in ok(make_certs(tmp_path, "broker", "mqtt.example.com", "10.0.0.6"))
    assert "IP Address:10.0.0.6" in x509(tmp_path / "broker.crt", "-ext", "subjectAltName")
    assert (tmp_path / "ca.crt").read_bytes() == before["ca.crt"]
    assert verifies(tmp_path, tmp_path / "broker.crt", "sslserver")


def test_certificates_of_a_replaced_ca_are_reissued(tmp_path: Path) -> None:
    ok(make_certs(tmp_path, "device", "cam-a"))
    old = (tmp_path / "clients/cam-a.crt").read_bytes()
    (tmp_path / "ca.crt").unlink()
    (tmp_path / "ca.key").unlink()
    out = ok(make_certs(tmp_path, "device", "cam-a"))
    assert "created CA" in out and "issued" in out
    assert (tmp_path / "clients/cam-a.crt").read_bytes() != old
    assert verifies(tmp_path, tmp_path / "clients/cam-a.crt", "sslclient")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["device"], "give at least one device id"),
        (["device", "cam/a"], "invalid device id 'cam/a'"),
        (["device", "cam+"], "invalid device id 'cam+'"),
        (["device", "scheduler"], "reserved"),
        (["scheduler", "cam-a"], "scheduler names start with 'scheduler'"),
        (["broker", "bad name"], "neither a hostname nor an IP address"),
        (["sign"], "unknown command 'sign'"),
    ],
)
def test_mistakes_are_explained(tmp_path: Path, args: list[str], message: str) -> None:
    result = make_certs(tmp_path, *args)
    assert result.returncode != 0
    assert message in result.stderr


def test_a_half_present_ca_is_not_overwritten(tmp_path: Path) -> None:
    ok(make_certs(tmp_path, "ca"))
    (tmp_path / "ca.key").unlink()
    result = make_certs(tmp_path, "device", "cam-a")
    assert result.returncode != 0
    assert "only one of ca.crt and ca.key" in result.stderr
    assert not (tmp_path / "clients/cam-a.crt").exists()
