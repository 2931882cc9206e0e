"""The typer app, its error handling and the old flag names it still accepts.

Every error a user can cause ends as one line on stderr and exit code 2 (see `main`); a bug ends as one line that
says where, exit code 1 (`VRAMFIT_TRACEBACK=1` shows the traceback).
"""

from __future__ import annotations

import os
import sys

import typer

from vramfit.errors import USER_ERRORS

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Which GPT and batch fit your GPU? Profile, fit, suggest, train.",
)

# Flag names before issue 27 gave each flag name one meaning, per command -> today's name. Hidden from --help;
# `main` rewrites them before parsing, so scripts written for the old names keep working.
OLD_FLAGS = {
    "prepare": {"--out": "--data-dir"},
    "train": {"--suggestions": "--suggestions-file"},
    "fit": {"--out": "--models", "--target": "--reading", "--device": "--only-device", "--recipe": "--only-recipe"},
    "suggest": {"--save": "--suggestions-file", "--device": "--target"},
    "plot": {"--out": "--plots", "--target": "--reading", "--device": "--only-device", "--recipe": "--only-recipe",
             "--suggestions": "--suggestions-file"},
    "report": {"--target": "--reading", "--suggestions": "--suggestions-file"},
    "export": {"--device": "--only-device"},
}


def _version(value: bool) -> None:
    if value:
        from vramfit import __version__

        typer.echo(f"vramfit {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print the version and exit")) -> None:
    """Which GPT and batch fit your GPU? Profile, fit, suggest, train."""


def fail(message: str) -> None:
    """Print one error line and exit 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def new_flag_names(argv: list[str]) -> list[str]:
    """`argv` with the command's old flag names (OLD_FLAGS) replaced by today's, `--old=value` included."""
    command = next((a for a in argv if not a.startswith("-")), None)
    renames = OLD_FLAGS.get(command or "", {})
    out = []
    for arg in argv:
        name, eq, value = arg.partition("=")
        out.append(renames[name] + eq + value if name in renames else arg)
    return out


def _click_exceptions():
    """The click exception classes typer raises (recent typer vendors click as typer._click)."""
    try:
        from typer._click import exceptions as cx
    except ImportError:
        from click import exceptions as cx
    return cx


def _usage_line(exc) -> str:
    """A click usage error as one line: the message and where to find help."""
    msg = " ".join(exc.format_message().split())
    where = exc.ctx.command_path if exc.ctx is not None else "vramfit"
    return f"error: {msg} (see `{where} --help`)"


def quiet_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush into a closed pipe raises nothing."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout replaced by something without a descriptor (tests)
        pass


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors (bad values, usage errors) become one `error:` line and exit code 2, never a
    traceback; --help stays rich."""
    cx = _click_exceptions()
    args = new_flag_names(sys.argv[1:] if argv is None else list(argv))
    try:
        rv = app(args=args, prog_name="vramfit", standalone_mode=False)
    except getattr(cx, "NoArgsIsHelpError", ()):  # the help was printed
        return 0
    except cx.UsageError as exc:
        typer.echo(_usage_line(exc), err=True)
        return 2
    except cx.ClickException as exc:  # e.g. a file option that cannot be opened
        typer.echo(f"error: {' '.join(exc.format_message().split())}", err=True)
        return 2
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("interrupted", err=True)
        return 130
    except BrokenPipeError:  # `vramfit fit | head`: the reader has all it wanted; exit quietly
        quiet_stdout()
        return 0
    except SystemExit as exc:
        if "PacifyFlushWrapper" in type(sys.stdout).__name__:  # typer's/click's EPIPE: a closed pipe, not an error
            quiet_stdout()
            return 0
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except USER_ERRORS as exc:
        typer.echo(f"error: {exc}", err=True)
        return 2
    except Exception as exc:  # a bug, not bad input: one line that says where; the traceback on request
        if os.environ.get("VRAMFIT_TRACEBACK"):
            raise
        typer.echo(f"error: internal error, please report it: {type(exc).__name__}: {exc} (at {_where(exc)}; "
                   "VRAMFIT_TRACEBACK=1 shows the traceback)", err=True)
        return 1
    return rv if isinstance(rv, int) else 0


def _where(exc: BaseException) -> str:
    """`file:line` of the innermost frame of `exc`'s traceback, relative to the package where it can be."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return "?"
    path = tb.tb_frame.f_code.co_filename
    for root in ("vramfit", "gpt"):
        marker = f"{os.sep}{root}{os.sep}"
        if marker in path:
            path = root + os.sep + path.rsplit(marker, 1)[1]
            break
    return f"{path}:{tb.tb_lineno}"
