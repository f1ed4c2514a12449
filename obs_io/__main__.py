"""`python -m obs_io cp|ls|rm|stat ...`: the mox.file API at a terminal.

Settings come from the environment ModelArts images set: S3_ENDPOINT, ACCESS_KEY_ID,
SECRET_ACCESS_KEY, S3_USE_HTTPS, S3_VERIFY_SSL, ... Bad input or a storage error prints one
line on stderr and exits with code 2.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import logging
import sys

from . import file as mox_file
from .errors import scrub
from .oneline import OneLineParser, one_line
from .urls import check


EXAMPLES = """\
examples:
  python -m obs_io cp obs://bucket/llama_7b /cache/llama_7b          download a folder
  python -m obs_io cp /cache/out/ckpt.ckpt obs://bucket/out/ckpt.ckpt upload one file
  python -m obs_io ls -r -l s3://bucket/strategy                      every file below, with sizes
  python -m obs_io rm -r obs://bucket/old_run                         remove a folder
  python -m obs_io stat obs://bucket/out/ckpt.ckpt                    size, time, file or folder
"""


def _version() -> str:
    """The installed distribution's version: one number, in pyproject.toml, for every tool."""
    try:
        return importlib.metadata.version("cloud-ckpt-transform")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def _parser() -> argparse.ArgumentParser:
    def sub_parser(name: str, help: str, example: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".",
                              epilog=f"example:\n  {example}", formatter_class=argparse.RawDescriptionHelpFormatter)

    p = OneLineParser(prog="python -m obs_io", description=__doc__, epilog=EXAMPLES,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"obs_io {_version()}",
                   help="print obs_io's version (the cloud-ckpt-transform package's) and exit")
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineParser, metavar="COMMAND",
                           title="commands", help="what to do; `python -m obs_io COMMAND --help` for its arguments")
    cp = sub_parser("cp", "copy a file, or a folder tree (local, obs://, s3://)",
                    "python -m obs_io cp --threads 32 obs://bucket/ckpt /cache/ckpt")
    cp.add_argument("src", help="file or folder to copy: a local path, obs:// or s3:// URL")
    cp.add_argument("dst", help="where it goes: the new file's full name, or the folder that mirrors src")
    cp.add_argument("--threads", type=int, default=16, help="files/parts in flight at once (default 16)")
    ls = sub_parser("ls", "list a folder", "python -m obs_io ls -r -l obs://bucket/out")
    ls.add_argument("url", help="folder to list: a local path, obs:// or s3:// URL")
    ls.add_argument("-r", "--recursive", action="store_true", help="every file and folder below, not only the children")
    ls.add_argument("-l", "--long", action="store_true", help="with sizes")
    rm = sub_parser("rm", "remove a file, or a folder with -r", "python -m obs_io rm -r obs://bucket/old_run")
    rm.add_argument("url", help="file or folder to remove")
    rm.add_argument("-r", "--recursive", action="store_true", help="remove a folder and everything in it")
    st = sub_parser("stat", "size, modification time and kind of a file or folder",
                    "python -m obs_io stat obs://bucket/out/ckpt.ckpt")
    st.add_argument("url", help="file or folder to describe")
    return p


def _run(args) -> None:
    check(*(getattr(args, name) for name in ("src", "dst", "url") if getattr(args, name, None)))
    if args.command == "cp":
        if args.threads < 1:
            raise ValueError(f"--threads={args.threads}: must be at least 1")
        mox_file.copy_parallel(args.src, args.dst, threads=args.threads)
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
