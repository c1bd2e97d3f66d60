"""The `builder` command's own subcommands (build, serve, demo), one module each with `HELP`,
`add_arguments(parser)` and `run(args)`; builder/cli.py dispatches to them and hands the load-test and client
commands to their own packages' subcommands (loadtests/commands/, client/commands.py)."""
