"""`python -m obs_io cp|ls|rm|stat ...`: the mox.file API at a terminal.

Bad input or a storage error prints one line on stderr and exits with code 2.
"""
from __future__ import annotations

import argparse
import datetime
import logging
import sys

from . import file as mox_file
from .errors import scrub
from .oneline import OneLineParser, one_line


def _parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m obs_io", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    cp = sub.add_parser("cp", help="copy a file, or a folder tree (local, obs://, s3://)")
    cp.add_argument("src")
    cp.add_argument("dst")
    cp.add_argument("--threads", type=int, default=16)
    ls = sub.add_parser("ls", help="list a folder")
    ls.add_argument("url")
    ls.add_argument("-r", "--recursive", action="store_true")
    ls.add_argument("-l", "--long", action="store_true", help="with sizes")
    rm = sub.add_parser("rm", help="remove a file, or a folder with -r")
    rm.add_argument("url")
    rm.add_argument("-r", "--recursive", action="store_true")
    st = sub.add_parser("stat", help="size, modification time and kind of a file or folder")
    st.add_argument("url")
    return p


def _run(args) -> None:
    if args.command == "cp":
        if args.threads < 1:
            raise ValueError(f"--threads={args.threads}: must be at least 1")
        mox_file.copy_parallel(args.src, args.dst, threads=args.threads)
    elif args.command == "ls":
        for e in mox_file.list_entries(args.url, recursive=args.recursive):
            name = e.name + ("/" if e.dir else "")
            print(f"{e.length:>14}  {name}" if args.long else name)
    elif args.command == "rm":
        mox_file.remove(args.url, recursive=args.recursive)
    elif args.command == "stat":
        st = mox_file.stat(args.url)
        mtime = datetime.datetime.fromtimestamp(st.mtime_nsec / 1e9, datetime.timezone.utc).isoformat()
        print(f"{args.url}\t{'folder' if st.is_dir else 'file'}\t{st.length} bytes\t{mtime}")


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except ValueError as err:
        print(f"python -m obs_io: error: {one_line(err, (ValueError,))}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    try:
        _run(args)
    except (OSError, ValueError) as err:
        print(f"obs_io {args.command}: {scrub(one_line(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"obs_io {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
