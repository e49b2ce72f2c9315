"""Subcommands of the ``specexec`` CLI: each module has ``add_arguments(parser)`` and ``run(args)``."""
