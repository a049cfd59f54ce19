"""What every script shares: turning errors into exit codes, JSON flags, output-path checks.

Exit codes: 0 success; 2 a usage error or a stopped run (one ``error: ...`` line, no traceback);
130 interrupted by Ctrl-C, 143 stopped by SIGTERM during training (one line saying where and how to resume);
1 any other error (one ``error:`` line naming its type). ``POINTCOC_DEBUG=1`` (or ``pointcoc --debug ...``)
shows the traceback of every error instead.
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import re
import sys
from pathlib import Path
from typing import Optional

from .._atomic import check_output_file
from .._optional import MissingOptionalPackage
from .errors import RunStopped, disk_full_cause
from .recipes import parse_with_recipe

__all__ = ["HelpFormatter", "USAGE_ERRORS", "EXIT_USAGE", "EXIT_INTERRUPTED", "EXIT_ERROR", "DEBUG_ENV_VAR",
           "debug_requested", "run_cli", "json_dict", "check_output_file"]

# Errors that mean "fix your input or install" or "the run stopped for a reason you can act on": exit code 2.
USAGE_ERRORS = (FileNotFoundError, ValueError, RunStopped, MissingOptionalPackage)
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C (a run stopped by SIGTERM: 143)
EXIT_ERROR = 1  # an error that is not a usage error: likely a bug; POINTCOC_DEBUG=1 shows where
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
DEBUG_ENV_VAR = "POINTCOC_DEBUG"


def debug_requested() -> bool:
    """Whether ``POINTCOC_DEBUG`` asks for tracebacks (set, and not empty or 0)."""
    return os.environ.get(DEBUG_ENV_VAR, "") not in ("", "0")


# A help text that states its option's default: "(default: X)", "(default X", "default: ..." or "Default: ..."
# at the start of the text or of a sentence or clause; not "torch's default" inside a sentence.
_STATES_DEFAULT = re.compile(r"(?:^|\(|[.;]\s)default\b", re.IGNORECASE)


class HelpFormatter(argparse.HelpFormatter):
    """``--help`` that shows each option's default once: appended as ``(default: X)`` unless the help already says
    its default, or the default is None / False (nothing to say). A default of 0 or 0.0 is shown."""

    def _get_help_string(self, action):
        text = action.help or ""
        nothing = action.default is None or action.default is False or action.default is argparse.SUPPRESS
        if nothing or not action.option_strings or _STATES_DEFAULT.search(text):
            return text
        return text + " (default: %(default)s)"


def json_dict(text: str) -> dict:
    """argparse type: a JSON object (``--model-kwargs '{"embed_dim": 32}'``)."""
    try:
        d = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r} ({err})") from None
    if not isinstance(d, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return d




def run_cli(main, parser: argparse.ArgumentParser, argv: Optional[list] = None) -> int:
    """Parse ``argv`` (with its ``--config`` recipe, for the training commands) and call ``main(args)``; returns
    its exit code.

    Usage errors and stopped runs print ``error: <message>`` and return 2; a full disk says so and returns 2;
    any other exception prints one ``error:`` line with its type and returns 1 (with ``POINTCOC_DEBUG=1``
    every error is raised, traceback and all);
    Ctrl-C prints one line (the message of a TrainingInterrupted, else "interrupted") and returns 130 (a
    training run stopped by SIGTERM: its line and 143). ``args.command`` is ``parser.prog`` (``pointcoc train``),
    which a training run names in its resume line. Under torchrun the process group is destroyed before it returns.
    """
    command = getattr(parser, "recipe_command", None)
    try:
        args = parse_with_recipe(parser, argv, command) if command else parser.parse_args(argv)
        args.command = parser.prog
        return main(args)
    except USAGE_ERRORS as err:
        if debug_requested():
            raise
        if not getattr(err, "quiet", False):  # quiet: another torchrun rank printed the message
            print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as err:  # noqa: BLE001 - a full disk anywhere in the chain is one line; the rest re-raised
        full = disk_full_cause(err)
        if full is not None:
            print(f"error: the disk is full ({full})", file=sys.stderr)
            return EXIT_USAGE
        if debug_requested():
            raise
        print(f"error: {type(err).__name__}: {err} (unexpected; {DEBUG_ENV_VAR}=1 shows the traceback, please "
              "include it in a bug report)", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt as err:
        print(str(err) or "interrupted", file=sys.stderr)
        return getattr(err, "exit_code", EXIT_INTERRUPTED)
    finally:
        from .distributed import leave_process_group
        leave_process_group()  # under torchrun: before interpreter shutdown, where gloo's threads abort the process
