"""CLI subcommands. Each module defines ``register(subparsers)`` that adds its parser(s)
and sets ``func`` to a handler ``handler(args) -> int``. Handlers only parse, call the
library and print."""

COMMAND_MODULES = (
    "fdrl.commands.prepare",    # prepare iemocap | manifest | iemocap-features | features | emodb | demo
    "fdrl.commands.features",   # features
    "fdrl.commands.cv",         # cv, demo
    "fdrl.commands.ablate",     # ablate
    "fdrl.commands.plot",       # plot
    "fdrl.commands.train",      # train, export
    "fdrl.commands.inference",  # predict, serve
    "fdrl.commands.probe",      # probe
    "fdrl.commands.collect",    # collect
    "fdrl.commands.compare",    # compare
)
