"""Host tools for the V2G charge controller (the `v2g` command).

Importing the package makes `import core` load the firmware's core package, the
contract shared with the controller (see host_tools/tree.py).
"""

from host_tools import tree as _tree  # noqa: F401
