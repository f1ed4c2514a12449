"""`python -m cloud_entry` / `cloud-entry`: the boot command of a training job.

Exit codes: the launched command's; 2 for bad input, a failed block or a bounded wait that ran
out (one line on stderr, traceback only in the log file); 1 for an unexpected error; on a stop
request (SIGTERM, SIGHUP: signals.py) the stopped command's, or 128+signal before the launch.
"""
from __future__ import annotations

import logging
import os
import sys
import traceback

from cloud_entry import logs, signals
from obs_io.oneline import one_line
from cloud_entry.errors import EntryError
from reshard.errors import ReshardError


def verify(argv: list[str]) -> int:
    """`cloud-entry verify LOCATION`: the converted set at LOCATION (a local folder or an
    obs:// / s3:// URL, e.g. <remote_save_url>/transformed_checkpoint/<name>) against its
    conversion_manifest.json.

    Args:
        argv: the arguments after `verify`.

    Returns:
        0 intact; 2 with a line per missing, extra or different file.

    Raises:
        EntryError: bad arguments (main prints the one line, exit 2).
        OSError: the store or disk holding the set failed.
    """
    from obs_io.oneline import OneLineParser
    from reshard.cli import verify_set

    parser = OneLineParser(prog="cloud-entry verify", description=verify.__doc__)
    parser.error_type = EntryError
    parser.add_argument("location", help="the converted set: local folder or obs:// / s3:// URL")
    return verify_set(parser.parse_args(argv).location)


def main(argv: list[str] | None = None) -> int:
    """The boot command of a training job (or `verify LOCATION`): every error is one line on
    stderr and an exit code, never a traceback (the log file has it).

    Args:
        argv: the command line after the program's name (None: sys.argv[1:]).

    Returns:
        The exit code (this module's docstring): the launched command's; 2 for bad input, a
        failed block, a bounded wait that ran out or storage that refused; 1 for a bug; on a
        stop request the stopped command's, or 128+signal; 130 for a Ctrl-C.
    """
    logs.console()
    log = logging.getLogger("cloud_entry")
    # bad input, and storage that refuses, lacks, or does not answer (obs_io raises OSError
    # subclasses naming the URL and endpoint; a full disk is OSError too): exit 2, not "a bug"
    user_errors: tuple[type[BaseException], ...] = (EntryError, ReshardError, OSError)
    with signals.raising():
        try:   # the job's modules load here: a Ctrl-C while they import is one line too
            from cloud_entry.args import parse_args
            from cloud_entry.job import run

            argv = sys.argv[1:] if argv is None else argv
            if argv[:1] == ["verify"]:   # `cloud-entry verify <path or URL>`: no job, no config
                return verify(argv[1:])
            return run(parse_args(argv))
        except signals.Terminated as exc:
            log.debug("stopped", exc_info=True)
            print(f"cloud-entry: stopped by {exc.name}", file=sys.stderr)
            return exc.exit_code
        except user_errors as exc:
            log.debug("failed", exc_info=True)
            print(f"cloud-entry: error: {one_line(exc, user_errors)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("cloud-entry: interrupted", file=sys.stderr)
            return 130
        except Exception as exc:  # noqa: BLE001 - one line for the user, the traceback for the log
            log.debug("unexpected error", exc_info=True)
            print(f"cloud-entry: error: {one_line(exc)} (a bug; traceback in the log file when there is "
                  "one, else with CLOUD_ENTRY_DEBUG=1)", file=sys.stderr)
            if os.environ.get("CLOUD_ENTRY_DEBUG"):
                traceback.print_exc()
            return 1


if __name__ == "__main__":
    sys.exit(main())
