"""Command-line interface: wiring only (each subcommand has ``add_args(parser)`` and ``run(args)``)."""
