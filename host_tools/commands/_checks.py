"""Checks of command-line values that click's own types do not make.

Each raises click.BadParameter naming the option and why, so a bad value ends in a one-line
error (exit 2) before anything is opened, run or written.
"""

import importlib.util
import math
import os
import stat
import sys
from pathlib import Path

import click


class FiniteFloatRange(click.FloatRange):
    """click.FloatRange that also refuses nan (every comparison with nan is false, so
    FloatRange alone lets it through)."""

    def convert(self, value, param, ctx):
        rv = super().convert(value, param, ctx)
        if math.isnan(rv):
            self.fail("{!r} is not a number".format(value), param, ctx)
        return rv


def _url_problem(value):
    scheme, _, rest = value.partition("://")
    if not scheme or importlib.util.find_spec("serial.urlhandler.protocol_" + scheme.lower()) is None:
        return "unknown URL scheme {!r}: use a device path or socket://HOST:PORT".format(scheme)
    if scheme.lower() in ("socket", "rfc2217"):
        host, _, port = rest.split("?")[0].split("/")[0].rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) <= 65535:
            return "{}:// wants HOST:PORT with a port 1..65535".format(scheme)
    return None


def port_problem(value):
    """Why value cannot be a serial port or pyserial URL, or None when it may be one.

    Only what can be told without opening it: opening a real serial port may reset the
    board on the other end, so that is left to the command."""
    if not value:
        return "empty: give a device path or socket://HOST:PORT"
    if "://" in value:
        return _url_problem(value)
    try:
        st = os.stat(value)
    except FileNotFoundError:
        return "no such device"
    except OSError as e:
        return e.strerror
    if stat.S_ISDIR(st.st_mode):
        return "is a directory, not a serial port"
    if stat.S_ISREG(st.st_mode):
        return "is a regular file, not a serial port"
    # Linux char major 1: /dev/null, zero, full, random... ("Memory devices", devices.txt)
    if sys.platform.startswith("linux") and stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 1:
        return "is a memory device, not a serial port"
    return None


def check_port(value, hint):
    """value, or click.BadParameter naming hint ("--port") when it cannot be a serial port."""
    if value is None:
        return None
    if not value:
        raise click.BadParameter("empty: give a device path or socket://HOST:PORT", param_hint=hint)
    why = port_problem(value)
    if why:
        raise click.BadParameter("cannot open {}: {}".format(value, why), param_hint=hint)
    return value


def check_out_file(value, hint, inputs=(), make_parents=False):
    """A file to write: not one of inputs (writing it would destroy what is read), and in a
    folder that exists (or, with make_parents, whose nearest existing parent is a folder)."""
    if value is None:
        return None
    p = Path(value)
    for src in inputs:
        if src is not None and os.path.realpath(p) == os.path.realpath(src):
            raise click.BadParameter("{} is also an input ({}); writing it would destroy it".format(
                value, src), param_hint=hint)
    parent = p.absolute().parent
    if make_parents:
        while not parent.exists() and not parent.is_symlink() and parent != parent.parent:
            parent = parent.parent
    if not parent.is_dir():
        why = "does not exist" if not parent.exists() else "is not a folder"
        raise click.BadParameter("cannot write {}: {} {}".format(value, parent, why), param_hint=hint)
    return value


def check_plot_file(value, hint, extra=()):
    """A plot file whose suffix matplotlib can write (or one of extra, e.g. .html)."""
    if value is None:
        return None
    suffix = Path(value).suffix.lower()
    if not suffix or suffix in extra:     # no suffix: matplotlib writes PNG
        return value
    from matplotlib.backend_bases import FigureCanvasBase

    kinds = FigureCanvasBase.get_supported_filetypes()
    if suffix.lstrip(".") not in kinds:
        raise click.BadParameter("{}: cannot draw a {!r} file; use one of {}".format(
            value, suffix, ", ".join(["." + k for k in ("png", "svg", "pdf")] + list(extra))),
            param_hint=hint)
    return value
