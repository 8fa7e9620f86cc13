"""The `search` command: run, resume, sweep, show, export and inspect spaces.

Exit codes: 0 done, 2 bad input (one line naming the file and field, no traceback), 1 failure.
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys
from pathlib import Path

from search.errors import RunFailed
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
        print(
            f"{sp.name:<12} {str(rel):<28} {sp.family.kind:<7} {len(sp.dims):>3} dims  "
            f"supernet {c['flops'] / 1e6:8.1f} MFLOPs {c['params'] / 1e6:6.3f} M params  "
            f"{sp.description}"
        )
    return 0


def _cmd_space(args) -> int:
    from spaces import load_space

    sp = load_space(args.file)
    full = sp.full()
    c = sp.cost(full)
    print(
        f"{sp.name}: family {sp.family.kind}, {len(sp.dims)} dimensions, "
        f"full network {c['flops'] / 1e6:.1f} MFLOPs, {c['params']:,} params"
    )
    width = max(22, *(len(n) for n in sp.dims))
    for n, d in sp.dims.items():
        note = sp.family.describe_scope(d.scope) if d.target == "filters" else ""
        if d.condition:
            note = f"active if {d.condition.depth_dim} keeps block {d.condition.index}"
        print(f"  {n:<{width}} {d.describe()}" + (f"  ({note})" if note else ""))
    for group, why in sp.family.excluded_scopes().items():
        print(f"  not searched: {group} ({why})")
    if args.sample:
        for s in range(args.sample):
            g = sp.sample(args.seed + s)
            c = sp.cost(g)
            print(
                f"sample {s}: id {sp.genome_id(g)} {c['flops'] / 1e6:.2f} MFLOPs "
                f"{c['params']:,} params"
            )
    return 0


def _flags(args) -> dict:
    return {
        "optimizer": args.optimizer,
        "budget": args.budget,
        "workers": args.workers,
        "seed": args.seed,
        "address": args.address,
        "runner": args.runner,
    }


def _cmd_run(args) -> int:
    from search.run import Run

    run = Run.create(args.config, args.out, args.set or [], _flags(args), overwrite=args.overwrite)
    print(f"run folder: {run.dir}", file=sys.stderr)
    return run.execute(progress=not args.no_progress)


def _cmd_resume(args) -> int:
    from search.run import Run

    run = Run.open(args.run_dir, args.set or [], _flags(args))
    return run.execute(progress=not args.no_progress)


def _cmd_show(args) -> int:
    from search.show import show

    return show(args.run_dir, top=args.top)


def _cmd_report(args) -> int:
    from search.report import write_report

    print(write_report(args.run_dir))
    return 0


def _cmd_export(args) -> int:
    from search.export import export

    return export(
        args.run_dir, trial=args.trial, pareto=args.pareto, formats=args.format, out=args.out
    )


def _cmd_sweep(args) -> int:
    from search.sweep import run_sweep

    return run_sweep(args.file, args.out, args.parallel, args.address)


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {n}")
    return n


def _run_flags(s: argparse.ArgumentParser) -> None:
    s.add_argument("--optimizer", help="optimizer name (default: the file's, else random)")
    s.add_argument("--budget", type=int, help="number of complete trials")
    s.add_argument(
        "--workers", type=int, help="evaluator workers on Ray (0: in-process; default: all cores)"
    )
    s.add_argument(
        "--address",
        help="use the Ray cluster at HOST:PORT (default: RAY_ADDRESS, else embedded local Ray)",
    )
    s.add_argument(
        "--runner",
        choices=["loop", "tune"],
        help="loop: archsearch's own (default); tune: Ray Tune with the optimiser as Searcher",
    )
    s.add_argument("--seed", type=int, help="seed of the whole run")
    s.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config field (dotted keys; a bare unknown key is an optimizer option)",
    )
    s.add_argument(
        "--no-progress", action="store_true", help="plain log lines instead of a progress bar"
    )


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="search", description="archsearch: hardware-aware compression and architecture search"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("run", help="run a search: search run spaces/tinynet.yaml")
    s.add_argument("config", help="a space / run YAML file")
    s.add_argument("--out", help="run folder (default runs/<space>-<time>)")
    _run_flags(s)
    s.add_argument(
        "--overwrite", action="store_true", help="write into an --out folder that holds other files"
    )
    s.set_defaults(func=_cmd_run)

    s = sub.add_parser("resume", help="finish an interrupted run")
    s.add_argument("run_dir")
    _run_flags(s)
    s.set_defaults(func=_cmd_resume)

    s = sub.add_parser("show", help="the Pareto front and best trials of a run, as a table")
    s.add_argument("run_dir")
    s.add_argument("--top", type=_positive, default=10, help="best trials to list")
    s.set_defaults(func=_cmd_show)

    s = sub.add_parser(
        "report", help="(re)build report.html and its PNGs for a run, also one still going"
    )
    s.add_argument("run_dir")
    s.set_defaults(func=_cmd_report)

    _add_export(sub)
    _add_space_commands(sub)
    return p


def _add_export(sub) -> None:
    s = sub.add_parser("export", help="write sliced models of a run, checked against PyTorch")
    s.add_argument("run_dir")
    which = s.add_mutually_exclusive_group()
    which.add_argument(
        "--trial",
        type=int,
        action="append",
        help="a trial number to export, repeatable (default: the best)",
    )
    which.add_argument("--pareto", action="store_true", help="every trial of the Pareto front")
    s.add_argument(
        "--format",
        action="append",
        choices=["onnx", "torchscript", "tvm"],
        help="repeatable (default: torchscript)",
    )
    s.add_argument("--out", help="folder (default RUN_DIR/export)")
    s.set_defaults(func=_cmd_export)


def _add_space_commands(sub) -> None:
    s = sub.add_parser(
        "sweep",
        help="the same search over several settings, each a run, compared: search sweep S.yaml",
    )
    s.add_argument("file", help="sweep file: a base run file and axes of --set values")
    s.add_argument(
        "--out", help="sweep folder (default: runs/sweep-<file>); the same folder resumes it"
    )
    s.add_argument("--parallel", type=_positive, help="combinations at once (default: the file's)")
    s.add_argument("--address", help="a Ray cluster for combinations that train on workers")
    s.set_defaults(func=_cmd_sweep)
    s = sub.add_parser("spaces", help="list the shipped spaces")
    s.set_defaults(func=_cmd_spaces)

    s = sub.add_parser("space", help="validate a space file and list its dimensions")
    s.add_argument("file", help="a space YAML file")
    s.add_argument(
        "--sample",
        type=int,
        default=0,
        metavar="N",
        help="also sample N genomes and print their cost",
    )
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_cmd_space)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except ArchsearchError as e:
        sys.stderr.write(f"search: error: {e}\n")
        return 2
    except RunFailed as e:
        sys.stderr.write(f"search: run failed: {e}\n")
        return 1
    except BrokenPipeError:  # `search show RUN | head`
        sys.stderr.close()
        return 0
    except PermissionError as e:
        sys.stderr.write(f"search: error: {e.filename}: permission denied\n")
        return 2
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        sys.stderr.write(
            f"search: run failed: no space left on the device writing {e.filename or 'the run'}; "
            "what was stored is kept: free some space and `search resume`\n"
        )
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("search: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
