"""boot.py and main.py are stored on the board without comments and docstrings, line for line."""

import pytest

from host_tools import flash, vm
from host_tools.slim import slim

SRC = b'''"""A module docstring
over two lines."""
import sys   # why


def f(x):
    """Only a docstring and a return."""
    # a comment line
    return x + 1  # trailing


def g():
    """Only a docstring."""


s = "# not a comment"
'''


def test_comments_and_docstrings_go_and_every_line_stays_in_its_place():
    out = slim(SRC).decode()
    assert out.count("\n") == SRC.count(b"\n")
    assert "why" not in out and "comment line" not in out and "docstring" not in out
    assert 's = "# not a comment"' in out            # a # inside a string is kept
    lines = out.splitlines()
    assert lines[8] == " return x + 1"                  # line 9 is still line 9, one space in
    ns = {}
    exec(compile(out, "slim", "exec"), ns)
    assert ns["f"](1) == 2 and ns["g"]() is None and ns["s"] == "# not a comment"


def test_indents_shrink_to_a_space_a_block_and_strings_keep_theirs():
    src = (b'def h(a):\n    if a:\n        t = (1,\n             2)\n'
           b'        return """x\n    kept as written"""\n    return [\n        a]\n')
    out = slim(src).decode()
    assert out == ('def h(a):\n if a:\n  t = (1,\n   2)\n'
                   '  return """x\n    kept as written"""\n return [\n  a]\n')
    ns = {}
    exec(compile(out, "slim", "exec"), ns)
    assert ns["h"](1) == "x\n    kept as written" and ns["h"](0) == [0]


@pytest.mark.parametrize("name", ["boot.py", "main.py"])
def test_the_boards_boot_and_main_are_slimmed_and_mean_the_same(name):
    src = (vm.FIRMWARE / name).read_bytes()
    plan = flash.prepare("pyboard")
    assert plan.files[name] == slim(src)
    assert len(plan.files[name]) < 0.75 * len(src)
