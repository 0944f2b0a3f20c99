"""`v2g`: one command for the V2G charge controller's host tools.

Each sub-command is a small module under host_tools/commands/ exposing a click command
named `cli`; this table is the only place that lists them. Modules load when their
command runs, so `v2g --help` stays fast.
"""

import importlib

import click

# name -> (module, one-line help). Order is the order of `v2g --help`.
COMMANDS = {
    "flash": ("host_tools.commands.flash", "Provision a controller over its REPL: compile, copy what changed, settings, key, reset, verify."),
    "image": ("host_tools.commands.image", "Build a factory image: MicroPython .hex + littlefs with the firmware, settings and key."),
    "bridge": ("host_tools.commands.bridge", "Bridge the controller to an OCPP CSMS and the app over MQTT 5."),
    "api": ("host_tools.commands.api", "The driver's app and its REST API (OAuth 2.0) over the stations' MQTT channel."),
    "secc": ("host_tools.commands.secc", "ISO 15118-20 for one EVSE (bidirectional, TLS), the controller deciding every limit."),
    "history": ("host_tools.commands.history", "The fleet's history store on PostgreSQL, sharded by station: migrate, ingest, stats, export."),
    "console": ("host_tools.commands.console", "Interactive diagnostic console over the host link."),
    "diag": ("host_tools.commands.diag", "Diagnostic report for the auditor (also v2g-diag --all)."),
    "sim": ("host_tools.commands.sim", "Simulate a whole station from a scenario (firmware on the MicroPython VM)."),
    "vboard": ("host_tools.commands.vboard", "Run the virtual controller board (firmware on the MicroPython VM)."),
    "bench": ("host_tools.commands.bench", "Bench tests: play the vehicle on CAN (and the meter) against a controller."),
    "fota": ("host_tools.commands.fota", "Push a signed update bundle to a controller: progress, resume, trial report."),
    "keygen": ("host_tools.commands.keygen", "Make a key pair for signing firmware updates."),
    "sign": ("host_tools.commands.sign", "Sign firmware files into an update bundle."),
    "verify": ("host_tools.commands.verify", "Check a signed update bundle: signature, manifest, digests."),
}


class CommandTable(click.Group):
    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module = importlib.import_module(COMMANDS[name][0])
        return module.cli

    def format_commands(self, ctx, formatter):
        rows = [(name, help_) for name, (_, help_) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=CommandTable, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="v2g-controller")
def main():
    """Host tools for the V2G charge controller.

    The controller firmware (MicroPython) owns safety and timing; these tools provision it,
    bridge it to a CSMS and to the app, update it, diagnose it and simulate a whole station.
    Run `v2g COMMAND --help` for each command.
    """


def diag_main():
    """`v2g-diag`: the diagnostic report, kept as its own command for field engineers."""
    module = importlib.import_module("host_tools.commands.diag")
    module.cli()
