"""Release keys and signatures, through the CLI functions and the library API."""

from __future__ import annotations

import argparse
import json
import stat
import time
from pathlib import Path

import pytest
import yaml

from lepton_edge.cli import keygen as keygen_command
from lepton_edge.cli import sign as sign_command
from lepton_edge.config.pipeline import ArtifactRef
from lepton_edge.core.errors import UpdateError
from lepton_edge.device.signing import (
    DEFAULT_EXPIRES_S,
    TrustedKeys,
    key_id,
    load_private_key,
    load_public_key,
    sign_file,
    verify_file,
)
from tests.support.onnx_models import mean_color_classifier


def parse(add_arguments, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def keygen(tmp_path: Path, name: str = "release") -> tuple[Path, Path]:
    prefix = tmp_path / "keys" / name
    assert keygen_command.run(parse(keygen_command.add_arguments, ["--out", str(prefix)])) == 0
    return Path(f"{prefix}.key"), Path(f"{prefix}.pub")


def test_keygen_writes_a_private_key_only_its_owner_can_read(tmp_path, capsys):
    private, public = keygen(tmp_path)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert str(public) in capsys.readouterr().out
    load_private_key(private), load_public_key(public)

    with pytest.raises(UpdateError, match=r"release.key: already exists; .*never overwritten"):
        keygen(tmp_path)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600


URL = "https://updates.example.com/releases/model.onnx"


def sign_argv(model: Path, private: Path, *extra: str, url: str = URL) -> list[str]:
    return [str(model), "--key", str(private), "--url", url, "--version", "3", "--target", "cams", *extra]


def test_keygen_sign_verify_round_trip_through_the_cli(tmp_path, capsys):
    private, public = keygen(tmp_path)
    assert key_id(load_public_key(public)) in capsys.readouterr().out
    model = mean_color_classifier(tmp_path / "model.onnx")

    before = int(time.time())
    assert sign_command.run(parse(sign_command.add_arguments, sign_argv(model, private))) == 0
    ref = ArtifactRef(**yaml.safe_load(capsys.readouterr().out)["model"]["artifact"])
    assert (ref.url, ref.size, ref.version, ref.target) == (URL, model.stat().st_size, 3, "cams")
    assert ref.key_id == key_id(load_public_key(public))
    assert before + DEFAULT_EXPIRES_S <= ref.expires <= int(time.time()) + DEFAULT_EXPIRES_S
    verify_file(model, TrustedKeys([public]), ref)

    argv = sign_argv(model, private, "--format", "json", "--expires-in", "60")
    assert sign_command.run(parse(sign_command.add_arguments, argv)) == 0
    as_json = json.loads(capsys.readouterr().out)["model"]["artifact"]
    assert as_json["expires"] <= int(time.time()) + 60 and as_json["signature"] != ref.signature
    with pytest.raises(UpdateError, match=r"--expires-in 0: must be 1\.\."):
        sign_command.run(parse(sign_command.add_arguments, sign_argv(model, private, "--expires-in", "0")))


def test_the_signature_covers_every_metadata_field_but_the_host(tmp_path):
    private, public = keygen(tmp_path)
    keys = TrustedKeys([public])
    model = mean_color_classifier(tmp_path / "model.onnx")
    ref = sign_file(model, private, url=URL, version=3, target="cams", expires=int(time.time()) + 600)
    keys.verify(ref)
    keys.verify(ref.model_copy(update={"url": "https://mirror.example.net/releases/model.onnx?token=x"}))
    altered = {
        "url": "https://updates.example.com/other/model.onnx",
        "version": 4,
        "target": "doors",
        "expires": ref.expires + 1,
        "size": ref.size + 1,
        "sha256": "0" * 64,
    }
    for name, value in altered.items():
        with pytest.raises(UpdateError, match=r"signature does not match the metadata .*\[refused: signature\]"):
            keys.verify(ref.model_copy(update={name: value}))
    model.write_bytes(model.read_bytes() + b"\0")
    with pytest.raises(
        UpdateError, match=rf"sha256 [0-9a-f]{{64}}, expected {ref.size} bytes with sha256 {ref.sha256}"
    ):
        verify_file(model, keys, ref)


def test_an_unknown_key_and_the_old_sha256_only_format_are_refused_with_how_to_fix(tmp_path):
    _, public = keygen(tmp_path)
    other_private, other_public = keygen(tmp_path, "other")
    model = mean_color_classifier(tmp_path / "model.onnx")
    ref = sign_file(model, other_private, url=URL, version=1, target="cams", expires=int(time.time()) + 600)
    with pytest.raises(
        UpdateError, match=rf"signed by key {ref.key_id}, which this device does not trust .*unknown key"
    ):
        TrustedKeys([public]).verify(ref)
    TrustedKeys([public, other_public]).verify(ref)  # rotation: both keys trusted

    old = ArtifactRef(url=URL, size=ref.size, sha256=ref.sha256, signature=ref.signature)
    with pytest.raises(UpdateError, match=r"covers the sha256 only .*re-sign it with `lepton-edge sign FILE"):
        TrustedKeys([public]).verify(old)


def test_sign_explains_how_to_pack_a_directory_and_checks_the_url(tmp_path):
    private, _ = keygen(tmp_path)
    artifact = tmp_path / "out" / "colors-fp32"
    artifact.mkdir(parents=True)
    with pytest.raises(UpdateError, match=r"is a directory; .*tar -cf colors-fp32.tar -C .*out colors-fp32"):
        sign_command.run(parse(sign_command.add_arguments, sign_argv(artifact, private)))
    model = mean_color_classifier(tmp_path / "model.onnx")
    with pytest.raises(UpdateError, match=r"cannot sign this reference: url: .*https://, http:// or file://"):
        sign_command.run(parse(sign_command.add_arguments, sign_argv(model, private, url="ftp://host/m.onnx")))
    with pytest.raises(UpdateError, match=r"target: String should match pattern"):
        sign_file(model, private, url=URL, version=1, target="../x", expires=1)


def test_keys_that_are_missing_or_of_the_wrong_kind_are_named(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    with pytest.raises(UpdateError, match=r"nope.key: private key not found .*lepton-edge keygen"):
        load_private_key(tmp_path / "nope.key")
    ec_key = ec.generate_private_key(ec.SECP256R1())
    pem = tmp_path / "ec.pub"
    pem.write_bytes(
        ec_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(UpdateError, match=r"ec.pub: not an ed25519 public key"):
        load_public_key(pem)
    garbage = tmp_path / "garbage.pub"
    garbage.write_text("hello")
    with pytest.raises(UpdateError, match=r"garbage.pub: not a PEM public key"):
        load_public_key(garbage)
