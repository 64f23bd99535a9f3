"""Template rules: the bundled file, matching, and one-line errors for bad rules files."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmsynth import constants
from lmsynth.errors import ConfigError
from lmsynth.templates import TemplateRule, TemplateRules, load_rules


def write_rules(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(text, encoding="utf-8")
    return path


class TestBundledRules:
    def test_load_and_types(self) -> None:
        rules = load_rules()
        assert rules.types[0] == "company introduction"
        assert len(rules.types) >= 5

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("Give me an introduction over 200 words for Acme Resins, a chemical company in Osaka",
             "company introduction"),
            ("Write an article about the Upstream and Downstream products of Toluene 2000 words in chemical industry",
             "chemical upstream and downstream products"),
            ("Write an article about the Safety of Benzoic acid 1500 words in chemical industry", "chemical safety"),
            ("Write an article about the Production Process of Urea 2000 words in chemical industry",
             "chemical production process"),
            ("Write an article about the Applications of Urea 1500 words in chemical industry",
             "chemical applications"),
            ("As an AI language model, pretend you are a pirate. Stay in character.", "language model roleplay"),
            ("You are the text completion model and you must complete the assistant answer below, only ...",
             "text completion"),
            ("Write an article about cats", None),
            ("How do I sort a list in Python?", None),
            ("", None),
        ],
    )  # fmt: skip
    def test_match(self, text: str, expected: str | None) -> None:
        assert load_rules().match(text) == expected

    def test_default_path_is_the_bundled_file(self) -> None:
        assert load_rules() == load_rules(constants.TEMPLATE_RULES)


class TestMatching:
    def test_first_matching_rule_wins(self) -> None:
        rules = TemplateRules(
            rules=[
                TemplateRule(type="specific", pattern=r"^Write a poem about cats"),
                TemplateRule(type="any", pattern="poem"),
            ]
        )
        assert rules.match("Write a poem about cats and dogs") == "specific"
        assert rules.match("A poem, please") == "any"

    def test_ignore_case(self) -> None:
        assert TemplateRule(type="t", pattern="^hello", ignore_case=True).matches("HELLO there")
        assert not TemplateRule(type="t", pattern="^hello").matches("HELLO there")

    def test_types_keep_file_order_without_repeats(self) -> None:
        rules = TemplateRules(
            rules=[
                TemplateRule(type="b", pattern="x"),
                TemplateRule(type="a", pattern="y"),
                TemplateRule(type="b", pattern="z"),
            ]
        )
        assert rules.types == ("b", "a")


class TestBadRules:
    def test_bad_regex_names_the_key(self, tmp_path: Path) -> None:
        p = write_rules(
            tmp_path, "rules:\n  - type: ok\n    pattern: 'fine'\n  - type: broken\n    pattern: '(unclosed'\n"
        )
        with pytest.raises(ConfigError) as exc:
            load_rules(p)
        reason = "missing ), unterminated subpattern at position 0"
        assert str(exc.value) == f"{p}: `rules[1].pattern`: Value error, invalid regular expression: {reason}"
        assert exc.value.key == "rules[1].pattern"

    def test_missing_type_names_the_key(self, tmp_path: Path) -> None:
        p = write_rules(tmp_path, "rules:\n  - pattern: 'x'\n")
        with pytest.raises(ConfigError) as exc:
            load_rules(p)
        assert str(exc.value) == f"{p}: `rules[0].type`: Field required"

    def test_unknown_key_is_refused(self, tmp_path: Path) -> None:
        p = write_rules(tmp_path, "rules:\n  - type: t\n    pattern: 'x'\n    regex: 'y'\n")
        with pytest.raises(ConfigError, match=r"`rules\[0\]\.regex`: Extra inputs are not permitted"):
            load_rules(p)

    def test_duplicate_pattern_is_refused(self, tmp_path: Path) -> None:
        p = write_rules(tmp_path, "rules:\n  - type: a\n    pattern: 'x'\n  - type: b\n    pattern: 'x'\n")
        with pytest.raises(ConfigError, match=r"`rules`: Value error, pattern of rule `b` is listed twice"):
            load_rules(p)

    def test_empty_file_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match=r"`rules`: Field required"):
            load_rules(write_rules(tmp_path, ""))

    def test_missing_file_names_it(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError) as exc:
            load_rules(tmp_path / "absent.yaml")
        assert str(exc.value) == f"{tmp_path / 'absent.yaml'}: cannot read: No such file or directory"
