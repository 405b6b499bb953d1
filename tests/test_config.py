"""Config errors name the key and the file (or override) before any work starts."""
from pathlib import Path

import pytest
import yaml

from pipeline.config import load_config
from pipeline.errors import ConfigError, InputError
from pipeline.runner import build_plan


def write(tmp_path: Path, cfg: dict) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


BASE = {"run": {"name": "t"}, "stages": {"sample": {"files": 2}, "ingest": {"tasks": 2}}}


def plan(tmp_path, cfg, overrides=()):
    loaded = load_config(write(tmp_path, cfg), overrides)
    return build_plan(loaded, tmp_path / "run")


def test_unknown_top_level_key_names_key_and_file(tmp_path):
    with pytest.raises(ConfigError, match=r"cfg.yaml: executor.wrokers: unknown key"):
        plan(tmp_path, {**BASE, "executor": {"wrokers": 2}})


def test_unknown_stage_key_names_the_stage_section(tmp_path):
    cfg = {"run": {"name": "t"}, "stages": {"sample": {"filez": 3}}}
    with pytest.raises(ConfigError, match=r"cfg.yaml: stages.sample.filez: unknown key"):
        plan(tmp_path, cfg)


def test_wrong_type_names_key_and_value(tmp_path):
    cfg = {"run": {"name": "t"}, "stages": {"sample": {"files": "many"}}}
    with pytest.raises(ConfigError, match=r"stages.sample.files: .*integer.*'many'"):
        plan(tmp_path, cfg)


def test_missing_required_value(tmp_path):
    with pytest.raises(ConfigError, match=r"cfg.yaml: run: required value missing"):
        plan(tmp_path, {"stages": {"sample": {}}})
    with pytest.raises(ConfigError, match=r"cfg.yaml: run.name: required value missing"):
        plan(tmp_path, {"run": {"seed": 1}, "stages": {"sample": {}}})


def test_unknown_stage_type(tmp_path):
    with pytest.raises(ConfigError, match=r"stages.sampel: unknown stage type 'sampel' \(known: .*sample"):
        plan(tmp_path, {"run": {"name": "t"}, "stages": {"sampel": {}}})


def test_overrides_are_typed_and_blamed(tmp_path):
    loaded = load_config(write(tmp_path, BASE), ["stages.ingest.tasks=3", "executor.workers=2", "run.seed=7"])
    assert loaded.top.executor.workers == 2 and loaded.top.run.seed == 7
    assert loaded.top.stages["ingest"]["tasks"] == 3
    with pytest.raises(ConfigError, match=r"override 'stages.ingest.taskz=3': stages.ingest.taskz: unknown key"):
        plan(tmp_path, BASE, ["stages.ingest.taskz=3"])
    with pytest.raises(ConfigError, match=r"expected KEY=VALUE"):
        load_config(write(tmp_path, BASE), ["executor.workers"])


def test_missing_input_is_an_error_before_work(tmp_path):
    cfg = {"run": {"name": "t"}, "stages": {"ingest": {"input": str(tmp_path / "nope")}}}
    with pytest.raises(InputError, match="nope"):
        plan(tmp_path, cfg)
    assert not (tmp_path / "run").exists()


def test_input_must_come_before(tmp_path):
    cfg = {"run": {"name": "t"}, "stages": {"ingest": {"input": "sample"}, "sample": {}}}
    with pytest.raises(ConfigError, match="comes after"):
        plan(tmp_path, cfg)


def test_bad_yaml_names_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("run: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(path)


def test_shipped_configs_validate(tmp_path):
    root = Path(__file__).resolve().parents[1] / "configs"
    for path in sorted(root.glob("*.yaml")):
        loaded = load_config(path)
        build_plan(loaded, tmp_path / path.stem)
