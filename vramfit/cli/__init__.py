"""The `vramfit` command line: short commands over shared typed options (`vramfit.cli.options`: one flag name,
one meaning). Each command parses, calls one function below the CLI, and prints; torch is imported only by the
commands that train, measure or estimate. Errors a user can cause end as one `error:` line, exit code 2.
"""

from importlib import import_module

from vramfit.cli.app import app, main

# each module registers its commands on `app`; --help lists them in this order
for _module in ("facts", "sweep", "model", "plan", "train", "checkpoint", "show"):
    import_module(f"vramfit.cli.{_module}")

__all__ = ["app", "main"]
