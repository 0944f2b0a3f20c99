"""Build hook: the wheel carries the controller's code as package data.

`v2g` flashes the firmware tree and the boards, images them and runs them in the virtual
board; an installed `v2g` has no checkout to read them from, so the build copies
firmware/ and boards/ into the package as host_tools/_tree/ (host_tools/tree.py finds
them there). Everything else is declared in pyproject.toml.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
TREES = ("firmware", "boards")


class build_py_with_tree(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return      # an editable install reads the checkout itself
        dest = Path(self.build_lib) / "host_tools" / "_tree"
        for name in TREES:
            target = dest / name
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(HERE / name, target,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.mpy"))


setup(cmdclass={"build_py": build_py_with_tree})
