"""Symmetric OpenPGP encryption of the gated files: round trip, UTF-8, wrong passphrase, plain gpg."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from pydantic import SecretStr

from lmsynth.crypto import decrypt_file, encrypt_file
from lmsynth.errors import PassphraseError


PLAINTEXT = "最初のユーザー指示\n".encode() * 500


@pytest.fixture
def plain(tmp_path: Path) -> Path:
    p = tmp_path / "plain.jsonl.gz"
    p.write_bytes(PLAINTEXT)
    return p


class TestCrypto:
    def test_round_trip(self, plain: Path, tmp_path: Path) -> None:
        enc = encrypt_file(plain, tmp_path / "x.gpg", passphrase=SecretStr("a" * 64))
        assert PLAINTEXT not in enc.read_bytes()
        out = decrypt_file(enc, tmp_path / "out", passphrase=SecretStr("a" * 64))
        assert out.read_bytes() == PLAINTEXT

    def test_non_ascii_passphrase(self, plain: Path, tmp_path: Path) -> None:
        secret = SecretStr("鍵のパスフレーズ-ß")
        enc = encrypt_file(plain, tmp_path / "x.gpg", passphrase=secret)
        assert decrypt_file(enc, tmp_path / "out", passphrase=secret).read_bytes() == PLAINTEXT

    def test_wrong_passphrase_is_one_line_and_writes_nothing(self, plain: Path, tmp_path: Path) -> None:
        enc = encrypt_file(plain, tmp_path / "x.gpg", passphrase=SecretStr("right-one"))
        with pytest.raises(PassphraseError) as info:
            decrypt_file(enc, tmp_path / "out", passphrase=SecretStr("wrong-one"))
        msg = str(info.value)
        assert "\n" not in msg and str(enc) in msg and "lmsynth key" in msg
        assert "wrong-one" not in msg and "right-one" not in msg
        assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.jsonl.gz", "x.gpg"]

    def test_plain_gpg_decrypts_our_output(self, plain: Path, tmp_path: Path) -> None:
        secret = "ユーザー鍵0123456789abcdef"
        enc = encrypt_file(plain, tmp_path / "x.gpg", passphrase=SecretStr(secret))
        home = tmp_path / "g"
        home.mkdir(mode=0o700)
        try:
            res = subprocess.run(
                ["gpg", "--batch", "--homedir", str(home), "--passphrase-fd", "0", "-d", str(enc)],
                input=secret.encode(),
                capture_output=True,
                timeout=60,
                check=False,
            )
        finally:
            subprocess.run(
                ["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], capture_output=True, check=False
            )
        assert res.returncode == 0, res.stderr.decode(errors="replace")
        assert res.stdout == PLAINTEXT

    def test_output_is_aes256_symmetric(self, plain: Path, tmp_path: Path) -> None:
        enc = encrypt_file(plain, tmp_path / "x.gpg", passphrase=SecretStr("p"))
        res = subprocess.run(
            ["gpg", "--batch", "--list-packets", "--homedir", str(tmp_path), str(enc)],
            capture_output=True,
            text=True,
            env={**os.environ, "LC_ALL": "C"},
            check=False,
        )
        subprocess.run(
            ["gpgconf", "--homedir", str(tmp_path), "--kill", "gpg-agent"], capture_output=True, check=False
        )
        assert "symkey enc packet: version 4, cipher 9" in res.stdout

    def test_empty_passphrase_refused(self, plain: Path, tmp_path: Path) -> None:
        with pytest.raises(PassphraseError):
            encrypt_file(plain, tmp_path / "x.gpg", passphrase=SecretStr(""))
        assert not (tmp_path / "x.gpg").exists()
