"""The settings table is the one source for code, CLI and docs."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from yujing.cli import main
from yujing.settings import Settings, load_settings, settings_markdown


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


def test_a_settings_file_overrides_what_it_names_and_keeps_the_rest(tmp_path, capsys):
    f = tmp_path / "site.toml"
    f.write_text(
        "[locate]\n"
        "depth_prior_typical_km = 12.0\n"
        "[[locate.depth_regions]]\n"
        'name = "forearc"\n'
        "polygon = [[19.5, -100.0], [19.5, -97.0], [17.0, -97.0], [17.0, -100.0]]\n"
        "typical_km = 50.0\nfree_km = 80.0\nscale_km = 20.0\n"
    )
    s = load_settings(f)
    assert s.locate.depth_prior_typical_km == 12.0
    assert [r.name for r in s.locate.depth_regions] == ["forearc"]  # a list replaces the list
    assert s.locate.depth_prior_free_km == Settings().locate.depth_prior_free_km
    assert s.picker == Settings().picker
    assert main(["settings", "--settings", str(f)]) == 0
    printed = msgspec.json.decode(capsys.readouterr().out)
    assert printed["locate"]["depth_regions"][0]["typical_km"] == 50.0
    # the JSON that `yujing settings` prints reads back as the same settings
    j = tmp_path / "site.json"
    j.write_bytes(msgspec.json.encode(s))
    assert load_settings(j) == s


@pytest.mark.parametrize(
    "text, says",
    [
        ("[locate]\ndepth_prior_scale_km = -1.0\n", "$.locate.depth_prior_scale_km"),
        ("[locate]\nno_such_setting = 1\n", "no_such_setting"),
        ("[[locate.depth_regions]]\nname = 'two'\npolygon = [[1, 2], [3, 4]]\ntypical_km = 1\nfree_km = 2\nscale_km = 3\n",
         "at least 3 vertices"),
        ("[[locate.depth_regions]]\nname = 'wide'\npolygon = [[1, -170], [3, 170], [5, 0]]\ntypical_km = 1\n"
         "free_km = 2\nscale_km = 3\n", "antimeridian"),
        ("[locate\n", "TOML"),
    ],
)
def test_a_wrong_settings_file_is_refused_naming_the_file_and_the_setting(tmp_path, capsys, text, says):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ValueError) as err:
        load_settings(f)
    assert str(f) in str(err.value) and says in str(err.value)
    for command in (["settings"], ["demo", "--quiet"], ["replay", str(tmp_path)]):
        assert main(command + ["--settings", str(f)]) == 2
        assert says in capsys.readouterr().err.replace("\n", "")
