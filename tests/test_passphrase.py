"""Passphrase resolution: file > LMSYNTH_PASSPHRASE > derived from the source; never leaked."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from lmsynth import constants
from lmsynth.errors import PassphraseError
from lmsynth.key import derive_key
from lmsynth.passphrase import read_passphrase_file, resolve_passphrase


PLANTED = "correct horse battery staple ✓ 42"


class TestOrder:
    def test_file_wins_over_env_and_source(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(constants.PASSPHRASE_ENV, "from-env")
        f = tmp_path / "pw"
        f.write_text("from-file\n")
        got = resolve_passphrase(passphrase_file=f, source=str(constants.SAMPLE_SOURCE))
        assert got.get_secret_value() == "from-file"

    def test_env_wins_over_source(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(constants.PASSPHRASE_ENV, "from-env")
        got = resolve_passphrase(passphrase_file=None, source=str(constants.SAMPLE_SOURCE))
        assert got.get_secret_value() == "from-env"

    def test_derived_from_the_source_last(self) -> None:
        got = resolve_passphrase(passphrase_file=None, source=str(constants.SAMPLE_SOURCE))
        assert got.get_secret_value() == derive_key(None).get_secret_value()

    def test_nothing_at_all_is_an_error(self) -> None:
        with pytest.raises(PassphraseError) as exc:
            resolve_passphrase(passphrase_file=None, source=None)
        assert str(exc.value) == (
            "no passphrase: pass --passphrase-file, set $LMSYNTH_PASSPHRASE, or give --source to derive it"
        )


class TestFile:
    @pytest.mark.parametrize(
        ("content", "expected"),
        [("pw\n", "pw"), ("pw", "pw"), ("pw\r\n", "pw"), ("pw\n\n", "pw\n"), (" pw \n", " pw ")],
    )
    def test_strips_exactly_one_trailing_newline(self, tmp_path: Path, content: str, expected: str) -> None:
        f = tmp_path / "pw"
        f.write_bytes(content.encode())
        assert read_passphrase_file(f) == expected

    @pytest.mark.parametrize("content", ["", "\n"])
    def test_empty_file_names_the_file(self, tmp_path: Path, content: str) -> None:
        f = tmp_path / "pw"
        f.write_text(content)
        with pytest.raises(PassphraseError) as exc:
            resolve_passphrase(passphrase_file=f, source=None)
        assert str(exc.value) == f"{f}: passphrase file is empty"

    def test_missing_file_names_the_file(self, tmp_path: Path) -> None:
        with pytest.raises(PassphraseError) as exc:
            resolve_passphrase(passphrase_file=tmp_path / "absent", source=None)
        assert str(exc.value) == f"{tmp_path / 'absent'}: cannot read passphrase file: No such file or directory"


class TestNoLeak:
    def test_planted_passphrase_appears_in_no_error_repr_or_log(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG)
        seen: list[str] = []
        f = tmp_path / "pw"
        f.write_text(PLANTED + "\n")
        got = resolve_passphrase(passphrase_file=f, source=None)
        assert got.get_secret_value() == PLANTED
        seen += [repr(got), str(got)]
        monkeypatch.setenv(constants.PASSPHRASE_ENV, PLANTED)
        got = resolve_passphrase(passphrase_file=None, source=None)
        seen += [repr(got), str(got)]
        # Error paths: a passphrase file that is not UTF-8 but carries the planted text.
        bad = tmp_path / "bad"
        bad.write_bytes(PLANTED.encode() + b"\xff\n")
        with pytest.raises(PassphraseError) as exc:
            resolve_passphrase(passphrase_file=bad, source=None)
        seen += [str(exc.value), repr(exc.value), str(exc.value.__cause__), str(exc.value.__context__)]
        seen += [r.getMessage() for r in caplog.records] + [caplog.text]
        assert caplog.records, "the resolution logs where the passphrase came from"
        for text in seen:
            assert PLANTED not in text
