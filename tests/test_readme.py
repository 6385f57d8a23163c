"""README.md keeps its promises: its label configs work, its settings table is complete, its commands exist."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from label_studio_sdk.label_interface import LabelInterface

from backend import weights
from backend.labelconfig import parse_label_config
from config.settings import Settings
from tests.e2e.projects import SEQUENCE_CONFIG, VIDEO_CONFIG

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
XML_BLOCKS = re.findall(r"^```xml\n(.*?)^```$", README, re.MULTILINE | re.DOTALL)


def _compact(xml: str) -> str:
    return re.sub(r">\s+<", "><", xml.strip())


def _table_variables() -> set[str]:
    """First-column names of README's environment variable table ("A, B" rows name two)."""
    section = README.split("## Environment variables", 1)[1].split("\n## ", 1)[0]
    names = set()
    for row in re.findall(r"^\| ([A-Z0-9_, ]+) \|", section, re.MULTILINE):
        names.update(n.strip() for n in row.split(","))
    return names


def test_readme_has_the_three_label_configs():
    kinds = [parse_label_config(xml).kind for xml in XML_BLOCKS]
    assert kinds == ["video", "image_sequence", "image"]


@pytest.mark.parametrize("xml", XML_BLOCKS, ids=["video", "image_sequence", "image"])
def test_readme_label_config_parses_with_label_studio_sdk(xml):
    interface = LabelInterface(xml)
    assert interface.objects and interface.controls
    for control in interface.controls:
        assert all(name in {o.name for o in interface.objects} for name in control.to_name)
    config = parse_label_config(xml)
    assert config.output.labels or config.output_labels, "the backend's output would carry no label"


def test_e2e_tests_use_the_readme_configs():
    assert _compact(XML_BLOCKS[0]) == _compact(VIDEO_CONFIG)
    assert _compact(XML_BLOCKS[1]) == _compact(SEQUENCE_CONFIG)


def test_every_setting_is_in_the_readme_table():
    documented = _table_variables()
    settings = {f.name.upper() for f in dataclasses.fields(Settings)}
    checkpoint = set(re.findall(r"^\| ([A-Z0-9_]+) \|", weights.__doc__, re.MULTILINE))
    assert {"SAM2_CACHE_DIR", "SAM2_CHECKPOINT_URL"} <= checkpoint
    assert settings - documented == set(), "settings missing from README.md's table"
    assert checkpoint - documented == set(), "backend/weights.py variables missing from README.md's table"
    assert documented - settings - checkpoint == set(), "README.md documents variables nothing reads"


def test_quick_start_is_two_commands_that_exist():
    quick = README.split("## Quick start", 1)[1]
    (first_block,) = re.findall(r"```bash\n(.*?)```", quick, re.DOTALL)[:1]
    assert first_block.splitlines() == ["bash scripts/serve.sh", "bash scripts/test.sh"]
    assert (ROOT / "scripts" / "serve.sh").is_file() and (ROOT / "scripts" / "test.sh").is_file()
    assert (ROOT / ".ci" / "run").read_text().rstrip().endswith("\nbash scripts/test.sh")
