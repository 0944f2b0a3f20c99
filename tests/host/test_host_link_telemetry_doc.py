"""Every field of the controller's telemetry sample is documented in docs/host-link.md."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _sample_keys():
    tree = ast.parse((ROOT / "firmware" / "app" / "station.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "sample":
            # each field is one put(KEY, value) / put_errors(KEY, mask) into the batch
            keys = [sub.args[0].value for sub in ast.walk(node)
                    if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute)
                    and sub.func.attr in ("put", "put_errors") and sub.args
                    and isinstance(sub.args[0], ast.Constant)]
            if keys:
                return keys
    raise AssertionError("no telemetry sample found in station.py")


def test_every_telemetry_field_is_documented():
    keys = _sample_keys()
    assert "dis_cap_wh" in keys and "soc_pm" in keys
    doc = (ROOT / "docs" / "host-link.md").read_text()
    section = doc.split("### `tel`", 1)[1].split("\n### ", 1)[0]
    rows = set(re.findall(r"^\| `([a-z_]+)` \|", section, re.M))
    missing = [k for k in keys if k not in rows]
    assert not missing, "telemetry fields not in docs/host-link.md: {}".format(missing)
