"""The settings table is the one source for code, CLI and docs."""

from __future__ import annotations

from pathlib import Path

import msgspec

from yujing.cli import main
from yujing.settings import Settings, settings_markdown


def test_docs_settings_md_is_generated_from_the_code():
    doc = Path(__file__).resolve().parents[1] / "docs" / "settings.md"
    assert doc.read_text() == settings_markdown() + "\n", "run: yujing settings --markdown > docs/settings.md"


def test_every_setting_has_a_description():
    for section in msgspec.structs.fields(Settings):
        info = msgspec.inspect.type_info(section.default.__class__)
        for f in info.fields:
            assert isinstance(f.type, msgspec.inspect.Metadata), f"{section.name}.{f.name} has no description"
            assert len(f.type.extra_json_schema["description"]) > 20


def test_cli_prints_settings_as_json(capsys):
    assert main(["settings"]) == 0
    printed = msgspec.json.decode(capsys.readouterr().out)
    assert printed["picker"]["sta_s"] == Settings().picker.sta_s
