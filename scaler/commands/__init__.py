"""The subcommands of `virtscale-scaler`, one module each; every module has ``add_parser``,
which adds its subparser and sets its ``handler``."""
