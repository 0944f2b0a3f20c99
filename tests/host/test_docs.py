"""The docs name what the code has: every setting, every error code, every command."""

from pathlib import Path

from core import config, errors

from host_tools.cli import COMMANDS

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_every_setting_is_documented():
    text = (DOCS / "settings.md").read_text()
    missing = [k for k in config.KEYS if "`{}`".format(k) not in text]
    assert missing == []


def test_every_error_code_is_documented():
    text = (DOCS / "errors.md").read_text()
    codes = list(errors.CODES)
    assert codes, "errors.active should list codes for a full mask"
    assert [c for c in codes if c not in text] == []


def test_every_command_is_in_the_readme():
    text = (DOCS.parent / "README.md").read_text()
    assert [c for c in COMMANDS if "v2g {}".format(c) not in text] == []


def test_every_decimal_setting_documents_its_step():
    rows = {}
    for line in (DOCS / "settings.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = cells[3]
    for key in config.KEYS:
        scale = config.scale(key)
        if not scale:
            continue
        unit = config.SCHEMA[key][4]
        assert rows[key] == (config.dec_text(1, scale) + (" " + unit if unit else "")), key


def test_docs_link_only_to_files_in_the_repository():
    import re
    bad = []
    for doc in DOCS.glob("*.md"):
        text = doc.read_text()
        for target in re.findall(r"\]\(([^)#\s]+)", text):
            if "://" not in target and not (doc.parent / target).exists():
                bad.append("{}: {}".format(doc.name, target))
        # the shared specs live outside the repository: a user cannot open them
        for m in re.findall(r"(?:shared/spec/|`spec/)\w+\.md", text):
            bad.append("{}: {}".format(doc.name, m))
    assert bad == []


def test_the_scenario_vocabulary_is_documented():
    from host_tools.scenario import EV_KEYS, EVENTS
    text = (DOCS / "scenarios.md").read_text()
    assert [do for do in EVENTS if "`{}`".format(do) not in text] == []
    assert [k for k in EV_KEYS if "`{}`".format(k) not in text] == []


def test_the_diagnostics_sample_prints_no_python_none():
    text = (DOCS / "diagnostics.md").read_text()
    assert "None  raised" not in text and "b'" not in text
