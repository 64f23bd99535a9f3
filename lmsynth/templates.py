"""Rule-based detection of template instructions (SPEC §2: "company introduction" and friends).

LMSYS-Chat-1M holds many machine-generated prompts that differ only in a name or a chemical. The original
release tagged them in `is_template_instruction` so users can filter them; lmsynth does the same from a
declarative YAML file (`constants.TEMPLATE_RULES` by default) instead of code, so a new family is a new rule.
The first matching rule wins.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from pydantic import Field, field_validator

from lmsynth import constants
from lmsynth.config import StrictModel, load_yaml


class TemplateRule(StrictModel):
    """One template family: a type name and the regex (`re.search`) that recognises its instructions."""

    type: str = Field(min_length=1, description='Template type written to records, e.g. "company introduction".')
    pattern: str = Field(min_length=1, description="Python regular expression, searched in the instruction.")
    description: str = Field("", description="What the family looks like, for people reading the rules.")
    ignore_case: bool = Field(False, description="Match without regard to case.")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        # A broken regex must fail when the rules load, naming the rule, not in the middle of a run.
        try:
            re.compile(value)
        except re.error as e:
            raise ValueError(f"invalid regular expression: {e}") from e
        return value

    def matches(self, text: str) -> bool:
        """Whether `text` belongs to this family."""
        return _compiled(self.pattern, self.ignore_case).search(text) is not None


class TemplateRules(StrictModel):
    """The rules file: an ordered list of rules, the first match wins."""

    rules: list[TemplateRule] = Field(min_length=1)

    @field_validator("rules")
    @classmethod
    def _unique_types(cls, rules: list[TemplateRule]) -> list[TemplateRule]:
        # Two rules may share a type (several phrasings of one family); identical patterns are a mistake.
        seen: set[str] = set()
        for rule in rules:
            if rule.pattern in seen:
                raise ValueError(f"pattern of rule `{rule.type}` is listed twice")
            seen.add(rule.pattern)
        return rules

    @property
    def types(self) -> tuple[str, ...]:
        """Rule types in file order, without repeats (the keys of per-rule counts)."""
        return tuple(dict.fromkeys(r.type for r in self.rules))

    def match(self, text: str) -> str | None:
        """The type of the first rule that matches `text`, or None."""
        for rule in self.rules:
            if rule.matches(text):
                return rule.type
        return None


def load_rules(path: Path | str | None = None) -> TemplateRules:
    """Read and validate a rules file (default: the bundled `template_rules.yaml`).

    Args:
        path: YAML file with a `rules:` list; None for the bundled rules.

    Returns:
        The validated rules.

    Raises:
        ConfigError: the file is missing, is not YAML, or a rule is invalid (names the key, e.g. `rules[2].pattern`).
    """
    return load_yaml(path if path is not None else constants.TEMPLATE_RULES, TemplateRules)


# Private helpers


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE if ignore_case else 0)
