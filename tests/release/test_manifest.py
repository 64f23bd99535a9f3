"""Release manifests: the shipped ones validate, and missing license data is refused by subset and field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lmsynth import constants
from lmsynth.errors import ConfigError, ManifestError
from lmsynth.release.release_yaml import load_manifest
from lmsynth.tree.manifest_json import ChecksumManifest


def _write(tmp_path: Path, mutate) -> Path:  # noqa: ANN001
    data = yaml.safe_load((constants.RELEASE_DIR / "v0.5.yaml").read_text(encoding="utf-8"))
    mutate(data)
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


class TestShippedManifests:
    def test_releases_are_cumulative(self) -> None:
        configs = {
            v: [s.config for s in load_manifest(constants.RELEASE_DIR / f"{v}.yaml").subsets]
            for v in ("v0.1", "v0.3", "v0.5")
        }
        assert configs == {
            "v0.1": ["llama-3.1"],
            "v0.3": ["llama-3.1", "gemma-2"],
            "v0.5": ["llama-3.1", "gemma-2", "gemma-3"],
        }

    def test_v05_models_and_licenses(self) -> None:
        m = load_manifest(constants.RELEASE_DIR / "v0.5.yaml")
        llama, gemma2, gemma3 = m.subsets
        assert llama.generator.id == "meta-llama/Llama-3.1-405B-Instruct"
        assert llama.judge.id == "meta-llama/Llama-3.1-70B-Instruct"
        assert llama.license.link == "https://www.llama.com/llama3_1/license/"
        assert "Built with Llama" in llama.license.notice
        assert gemma2.multiturn and gemma2.responses_per_instruction.en == 1
        assert gemma3.generator.id == "google/gemma-3-27b-it" and gemma3.generation.n == 10
        assert gemma3.responses_per_instruction.en == 0 and gemma3.judge_params.temperature == 0
        assert gemma3.license.link == "https://ai.google.dev/gemma/terms"
        assert m.instructions_license.link == "https://huggingface.co/datasets/lmsys/lmsys-chat-1m"
        assert m.scripts_license.id == "apache-2.0"
        assert str(gemma3.records) == "runs/gemma-3"

    def test_demo_manifest(self) -> None:
        m = load_manifest(constants.RELEASE_DIR / "demo.yaml")
        assert m.version == "v0.5"
        (s,) = m.subsets
        assert (s.config, s.generator.id, s.license.id) == (
            "smollm2-demo",
            "HuggingFaceTB/SmolLM2-135M-Instruct",
            "apache-2.0",
        )
        assert (str(s.records), str(s.prepared)) == ("runs/demo", "runs/prepared")


class TestLicenseRefusals:
    def test_missing_license_names_subset_and_field(self, tmp_path: Path) -> None:
        path = _write(tmp_path, lambda d: d["subsets"][1].pop("license"))
        with pytest.raises(ManifestError) as info:
            load_manifest(path)
        assert (info.value.subset, info.value.field) == ("gemma-2", "license")
        assert "gemma-2" in str(info.value) and "license" in str(info.value) and "\n" not in str(info.value)

    @pytest.mark.parametrize("field", ["link", "name", "notice"])
    def test_other_license_without_field(self, tmp_path: Path, field: str) -> None:
        path = _write(tmp_path, lambda d: d["subsets"][2]["license"].pop(field))
        with pytest.raises(ManifestError) as info:
            load_manifest(path)
        assert (info.value.subset, info.value.field) == ("gemma-3", f"license.{field}")

    def test_license_without_id(self, tmp_path: Path) -> None:
        path = _write(tmp_path, lambda d: d["subsets"][0]["license"].pop("id"))
        with pytest.raises(ManifestError) as info:
            load_manifest(path)
        assert (info.value.subset, info.value.field) == ("llama-3.1", "license.id")

    def test_duplicate_config_refused(self, tmp_path: Path) -> None:
        path = _write(tmp_path, lambda d: d["subsets"].append(dict(d["subsets"][0])))
        with pytest.raises(ConfigError, match="appears twice"):
            load_manifest(path)

    def test_unknown_key_refused(self, tmp_path: Path) -> None:
        path = _write(tmp_path, lambda d: d["subsets"][0].update(temperature=0.3))
        with pytest.raises(ManifestError) as info:
            load_manifest(path)
        assert (info.value.subset, info.value.field) == ("llama-3.1", "temperature")


def test_checksum_manifest_json_is_canonical() -> None:
    entry = {"sha256": "0" * 64, "size": 1}
    a = ChecksumManifest.model_validate(
        {"version": "v0.5", "tool_version": "x", "subsets": {}, "files": {"b": entry, "a": entry}}
    )
    b = ChecksumManifest.model_validate(
        {"version": "v0.5", "tool_version": "x", "subsets": {}, "files": {"a": entry, "b": entry}}
    )
    assert a.to_json() == b.to_json()
    assert a.to_json().index('"a"') < a.to_json().index('"b"')
