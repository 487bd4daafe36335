"""CLI subcommands. Each module defines ``register(subparsers)`` that adds its parser(s)
and sets ``func`` to a handler ``handler(args) -> int``. Handlers parse nothing
themselves beyond argparse: they call the library and print."""

COMMAND_MODULES = (
    "fdrl.commands.prepare",
    "fdrl.commands.features",
    "fdrl.commands.train",
    "fdrl.commands.ablate",
    "fdrl.commands.plot",
    "fdrl.commands.inference",
    "fdrl.commands.probe",
    "fdrl.commands.collect",
)
