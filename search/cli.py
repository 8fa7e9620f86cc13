"""The `search` command: run, resume, show, export and inspect spaces.

Exit codes: 0 done, 2 bad input (one line naming the file and field, no traceback), 1 failure.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from spaces.errors import ArchsearchError

log = logging.getLogger("archsearch")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one line and exit code 2."""

    def error(self, message):  # noqa: D401
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def _cmd_spaces(args) -> int:
    from spaces import load_space, shipped_spaces

    for p in shipped_spaces():
        sp = load_space(p)
        g = sp.full()
        c = sp.cost(g)
        rel = p.relative_to(Path.cwd()) if p.is_relative_to(Path.cwd()) else p
        print(f"{sp.name:<12} {str(rel):<28} {sp.family.kind:<7} {len(sp.dims):>3} dims  "
              f"supernet {c['flops'] / 1e6:8.1f} MFLOPs {c['params'] / 1e6:6.3f} M params  {sp.description}")
    return 0


def _cmd_space(args) -> int:
    from spaces import load_space

    sp = load_space(args.file)
    full = sp.full()
    c = sp.cost(full)
    print(f"{sp.name}: family {sp.family.kind}, {len(sp.dims)} dimensions, "
          f"full network {c['flops'] / 1e6:.1f} MFLOPs, {c['params']:,} params")
    for n, d in sp.dims.items():
        cond = f"  (active if {d.condition.depth_dim} keeps block {d.condition.index})" if d.condition else ""
        print(f"  {n:<22} {d.describe()}{cond}")
    if args.sample:
        for s in range(args.sample):
            g = sp.sample(args.seed + s)
            c = sp.cost(g)
            print(f"sample {s}: id {sp.genome_id(g)} {c['flops'] / 1e6:.2f} MFLOPs {c['params']:,} params")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="search", description="archsearch: hardware-aware compression and architecture search")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("spaces", help="list the shipped spaces")
    s.set_defaults(func=_cmd_spaces)

    s = sub.add_parser("space", help="validate a space file and list its dimensions")
    s.add_argument("file", help="a space YAML file")
    s.add_argument("--sample", type=int, default=0, metavar="N", help="also sample N genomes and print their cost")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_cmd_space)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except ArchsearchError as e:
        sys.stderr.write(f"search: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("search: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
