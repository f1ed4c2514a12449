"""`obs_io cp|ls|rm|stat ...` (also `python -m obs_io`): the mox.file API at a terminal.

Settings come from the environment ModelArts images set: S3_ENDPOINT, ACCESS_KEY_ID,
SECRET_ACCESS_KEY, S3_USE_HTTPS, S3_VERIFY_SSL, ... Bad input or a storage error prints one
line on stderr and exits with code 2. Results (listings, stat lines) go to stdout; log lines,
progress and errors to stderr. A copy shows a progress bar on a terminal (a single file too),
else a line at least every 10 s; -q: warnings and errors only, no progress; -v: debug lines.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import logging
import os
import sys

from . import file as mox_file
from .errors import scrub
from .oneline import OneLineParser, one_line
from .urls import check


EXAMPLES = """\
examples:
  obs_io cp obs://bucket/llama_7b /cache/llama_7b          download a folder
  obs_io cp /cache/out/ckpt.ckpt obs://bucket/out/ckpt.ckpt upload one file (progress on a terminal)
  obs_io ls -r -l s3://bucket/strategy                      every file below, with sizes
  obs_io rm -r obs://bucket/old_run                         remove a folder
  obs_io stat obs://bucket/out/ckpt.ckpt                    size, time, file or folder
  python -m obs_io ls obs://bucket/                         the same commands without the script
"""


def prog_name() -> str:
    """How the user started it: `python -m obs_io` or the `obs_io` console script."""
    return "python -m obs_io" if os.path.basename(sys.argv[0] or "") == "__main__.py" else "obs_io"


def _version() -> str:
    """The installed distribution's version: one number, in pyproject.toml, for every tool."""
    try:
        return importlib.metadata.version("cloud-ckpt-transform")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def _parser() -> argparse.ArgumentParser:
    def sub_parser(name: str, help: str, example: str) -> argparse.ArgumentParser:
        parser = sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".",
                                epilog=f"example:\n  {prog} {example}",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
        add_verbosity(parser)
        return parser

    prog = prog_name()

    p = OneLineParser(prog=prog, description=__doc__, epilog=EXAMPLES,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"obs_io {_version()}",
                   help="print obs_io's version (the cloud-ckpt-transform package's) and exit")
    add_verbosity(p)
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineParser, metavar="COMMAND",
                           title="commands", help=f"what to do; `{prog} COMMAND --help` for its arguments")
    cp = sub_parser("cp", "copy a file, or a folder tree (local, obs://, s3://)",
                    "cp --threads 32 obs://bucket/ckpt /cache/ckpt")
    cp.add_argument("src", help="file or folder to copy: a local path, obs:// or s3:// URL")
    cp.add_argument("dst", help="where it goes: the new file's full name, or the folder that mirrors src")
    cp.add_argument("--threads", type=int, default=16, help="files/parts in flight at once (default 16)")
    ls = sub_parser("ls", "list a folder", "ls -r -l obs://bucket/out")
    ls.add_argument("url", help="folder to list: a local path, obs:// or s3:// URL")
    ls.add_argument("-r", "--recursive", action="store_true", help="every file and folder below, not only the children")
    ls.add_argument("-l", "--long", action="store_true", help="with sizes")
    rm = sub_parser("rm", "remove a file, or a folder with -r", "rm -r obs://bucket/old_run")
    rm.add_argument("url", help="file or folder to remove")
    rm.add_argument("-r", "--recursive", action="store_true", help="remove a folder and everything in it")
    st = sub_parser("stat", "size, modification time and kind of a file or folder",
                    "stat obs://bucket/out/ckpt.ckpt")
    st.add_argument("url", help="file or folder to describe")
    return p


def add_verbosity(parser: argparse.ArgumentParser) -> None:
    """-q/--quiet and -v/--verbose, as aws-cli and s5cmd users know them: before or after the
    command (`obs_io -q cp ...`, `obs_io cp -q ...`)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                       help="warnings and errors only (no progress)")
    group.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="debug lines too")


def _run(args) -> None:
    check(*(getattr(args, name) for name in ("src", "dst", "url") if getattr(args, name, None)))
    if args.command == "cp":
        if args.threads < 1:
            raise ValueError(f"--threads={args.threads}: must be at least 1")
        mox_file.copy_parallel(args.src, args.dst, threads=args.threads, progress=not args.quiet)
    elif args.command == "ls":
        for e in mox_file.list_entries(args.url, recursive=args.recursive):
            name = e.name + ("/" if e.dir else "")
            print(f"{e.length:>14}  {name}" if args.long else name)
    elif args.command == "rm":
        try:
            mox_file.remove(args.url, recursive=args.recursive)
        except IsADirectoryError:
            raise IsADirectoryError(f"{args.url} is a folder: use rm -r to remove it") from None
    elif args.command == "stat":
        st = mox_file.stat(args.url)
        mtime = datetime.datetime.fromtimestamp(st.mtime_nsec / 1e9, datetime.timezone.utc).isoformat()
        print(f"{args.url}\t{'folder' if st.is_dir else 'file'}\t{st.length} bytes\t{mtime}")


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except ValueError as err:
        print(f"{prog_name()}: error: {one_line(err, (ValueError,))}", file=sys.stderr)
        return 2
    args.quiet, args.verbose = getattr(args, "quiet", False), getattr(args, "verbose", False)
    if args.quiet and args.verbose:
        print(f"{prog_name()}: error: -q/--quiet and -v/--verbose exclude each other", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        _run(args)
    except (OSError, ValueError) as err:
        print(f"obs_io {args.command}: {scrub(one_line(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"obs_io {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0
