"""Release keys and signatures, through the CLI functions and the library API."""

from __future__ import annotations

import argparse
import json
import stat
from pathlib import Path

import pytest
import yaml

from lepton_edge.cli import keygen as keygen_command
from lepton_edge.cli import sign as sign_command
from lepton_edge.config.pipeline import ArtifactRef
from lepton_edge.core.errors import UpdateError
from lepton_edge.device.signing import (
    load_private_key,
    load_public_key,
    sign_file,
    verify_file,
)
from lepton_edge.device.updates import ArtifactStore
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


def test_keygen_sign_verify_round_trip_through_the_cli(tmp_path, capsys):
    private, public = keygen(tmp_path)
    capsys.readouterr()
    model = mean_color_classifier(tmp_path / "model.onnx")
    url = "https://updates.example.com/model.onnx"

    assert sign_command.run(parse(sign_command.add_arguments, [str(model), "--key", str(private), "--url", url])) == 0
    snippet = yaml.safe_load(capsys.readouterr().out)
    ref = ArtifactRef(**snippet["model"]["artifact"])
    assert ref.url == url and ref.size == model.stat().st_size
    verify_file(model, public, ref.sha256, ref.signature)

    argv = [str(model), "--key", str(private), "--format", "json"]
    assert sign_command.run(parse(sign_command.add_arguments, argv)) == 0
    out = capsys.readouterr()
    as_json = json.loads(out.out)["model"]["artifact"]
    assert as_json["url"] is None and "give --url" in out.err
    assert as_json["signature"] == ref.signature  # ed25519 signatures are deterministic


def test_a_signed_file_is_accepted_by_the_device_store(tmp_path, capsys):
    private, public = keygen(tmp_path)
    capsys.readouterr()
    model = mean_color_classifier(tmp_path / "release" / "model.onnx")
    sign_command.run(parse(sign_command.add_arguments, [str(model), "--key", str(private), "--url", model.as_uri()]))
    ref = ArtifactRef(**yaml.safe_load(capsys.readouterr().out)["model"]["artifact"])
    store = ArtifactStore(tmp_path / "state", public, 1 << 20)
    assert store.activate(store.stage(ref)).read_bytes() == model.read_bytes()


def test_verify_file_refuses_a_changed_file_and_another_key(tmp_path):
    private, public = keygen(tmp_path)
    _, other_public = keygen(tmp_path, "other")
    model = mean_color_classifier(tmp_path / "model.onnx")
    fields = sign_file(model, private)
    assert fields["url"] is None and fields["size"] == model.stat().st_size

    with pytest.raises(UpdateError, match=r"signature does not match .*other.pub"):
        verify_file(model, other_public, fields["sha256"], fields["signature"])
    model.write_bytes(model.read_bytes() + b"\0")
    with pytest.raises(UpdateError, match=rf"sha256 is [0-9a-f]{{64}}, expected {fields['sha256']}"):
        verify_file(model, public, fields["sha256"], fields["signature"])
    with pytest.raises(UpdateError, match="not valid base64"):
        verify_file(model, public, fields["sha256"], "%%%")


def test_sign_explains_how_to_pack_a_directory_and_checks_the_url(tmp_path):
    private, _ = keygen(tmp_path)
    artifact = tmp_path / "out" / "colors-fp32"
    artifact.mkdir(parents=True)
    with pytest.raises(UpdateError, match=r"is a directory; .*tar -cf colors-fp32.tar -C .*out colors-fp32"):
        sign_command.run(parse(sign_command.add_arguments, [str(artifact), "--key", str(private)]))
    model = mean_color_classifier(tmp_path / "model.onnx")
    with pytest.raises(UpdateError, match=r"--url 'ftp://host/m.onnx': .*https://, http:// or file://"):
        sign_command.run(parse(sign_command.add_arguments, [str(model), "--key", str(private), "--url", "ftp://host/m.onnx"]))


def test_keys_that_are_missing_or_of_the_wrong_kind_are_named(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    with pytest.raises(UpdateError, match=r"nope.key: private key not found .*lepton-edge keygen"):
        load_private_key(tmp_path / "nope.key")
    ec_key = ec.generate_private_key(ec.SECP256R1())
    pem = tmp_path / "ec.pub"
    pem.write_bytes(
        ec_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with pytest.raises(UpdateError, match=r"ec.pub: not an ed25519 public key"):
        load_public_key(pem)
    garbage = tmp_path / "garbage.pub"
    garbage.write_text("hello")
    with pytest.raises(UpdateError, match=r"garbage.pub: not a PEM public key"):
        load_public_key(garbage)
