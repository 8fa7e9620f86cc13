"""Real latency from TVM: compile a candidate with MetaSchedule-tuned kernels for the target and
time it on the Relax VM with TVM's time evaluator (median over repeats, interquartile spread),
its outputs checked against PyTorch.

`TVMBackend` owns TVM in one long-lived process (the run's driver, or the latency service actor
that Ray workers call), so TVM's start-up is paid once; measurements and tuning hold the
machine's core lock. Measured networks are kept in `networks.jsonl` beside the tuning database:
they are what the latency model is calibrated on, and they are never measured twice."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kernels.cores import core_lock, others_load
from kernels.latency_model import LatencyModel, Op, op_of_kernel, torch_ops
from kernels.provider import rounds_summary, summary
from kernels.tvm_compile import (
    first_output,
    host_cores,
    host_target,
    load_tvm,
    prepared_module,
    runtime_threads,
    with_database,
)
from kernels.tvm_library import KernelLibrary
from kernels.tvm_tuning import TuningDB, extract_kernels, jsonl_rows
from spaces.layers import GConv2d, input_channels

log = logging.getLogger(__name__)


def fold_batch_norm(model: nn.Module) -> nn.Module:
    """An eval-mode copy with each batch norm that follows a convolution (its only user) folded
    into it (torch.fx, the convolution and batch-norm subclasses of spaces.layers traced as
    leaves), or the model itself where it cannot be traced (TVM's own fold pass then does the
    common case, at about 3 s a network: its constant folding compiles each weight's arithmetic)."""
    import copy

    from torch import fx
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    class Leaves(fx.Tracer):
        def is_leaf_module(self, m, name):
            return isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)) or super().is_leaf_module(
                m, name
            )

    model = copy.deepcopy(model).eval()
    try:
        gm = fx.GraphModule(model, Leaves().trace(model))
    except Exception as e:  # noqa: BLE001 - not every module is fx-traceable
        log.debug("torch.fx could not trace the network (%s); TVM's pass folds batch norm", e)
        return model
    mods = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        conv = node.args[0] if node.op == "call_module" and node.args else None
        if not (
            isinstance(mods.get(node.target), nn.BatchNorm2d)
            and isinstance(conv, fx.Node)
            and conv.op == "call_module"
            and type(mods.get(conv.target)) in (nn.Conv2d, GConv2d)
            and len(conv.users) == 1
        ):
            continue
        fused = fuse_conv_bn_eval(mods[conv.target], mods[node.target])
        parent, _, leaf = conv.target.rpartition(".")
        setattr(gm.get_submodule(parent), leaf, fused)
        node.replace_all_uses_with(conv)
        gm.graph.erase_node(node)
    gm.recompile()
    return gm


def realistic(model, resolution: int, seed: int = 0):
    """A network whose outputs depend on its input, as a trained one's do: batch-norm statistics
    recalibrated on random inputs and a random classifier (an initialised supernet's outputs are
    nearly constant, which would make any output check pass). Latency does not depend on it."""
    import torch

    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
            m.reset_running_stats()
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=0.5)
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(16, input_channels(model), resolution, resolution))
    return model.eval()


def network_key(ops: list[Op], resolution: int) -> str:
    """A network, as far as latency goes: its operators in order and its input."""
    blob = json.dumps([resolution, LatencyModel.ops_to_json(ops)])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def row_ms(row: dict) -> float:
    """A networks.jsonl row's latency (ms): the least of its rounds where it has them
    (`rounds_summary`; rows written before that rule hold the median in `ms`)."""
    return float(min(row["rounds_ms"])) if row.get("rounds_ms") else float(row["ms"])


def over_bounds(times: list[list[float]], bounds) -> list[int]:
    """The networks (by index) whose quietest time is over their bound by more than
    `BOUND_SLACK` (`TVMBackend.time_rounds`)."""
    return [
        i
        for i, (t, b) in enumerate(zip(times, bounds or []))
        if b is not None and t and min(t) > b * (1 + BOUND_SLACK)
    ]


# a network's timing whose interquartile spread is over this share of its median had a slow spell
# over part of its repeats, and is timed again (`TVMBackend.time`). Of the 55 search timings of
# bench-15, -16 and -17, 44 had a spread of 1-10 % of their median and 11 of 11-83 %; bench-16's
# timing 65.6 % over the same compiled network timed quietly (benchmarks/results/
# transfer_quality.md) had 17 %, the 2 others compared there 2 and 7 %
RETIME_SPREAD = 0.10
RETIME_TRIES = 2  # more timings at most

# A network given a bound (`time_rounds`: the front check's, the figure the search priced it at
# with transferred kernels, among the check's own candidates) whose quietest round is over it by
# more than this share was timed in a slow spell: this VM's run 2x for up to 30 s or more, longer
# than the check's rounds (bench-17, -18 and the default run bench-19 each reported 2 or 3 front
# networks 1.3-1.8x their search figures, and 1.5-1.9x the same networks timed again). Such
# networks are timed in more rounds, `EXTRA_ROUND_S` apart, until one is under the bound or
# `EXTRA_ROUNDS` were taken.
BOUND_SLACK = 0.15
EXTRA_ROUNDS = 12
EXTRA_ROUND_S = 5.0

# Before each round of interleaved timings (`time_rounds`: the front check's, tvm-model's
# sample's, the benchmarks') the thread-sync probe (`kernels.sync_probe`: one tiny parallel
# kernel, its quickest reading kept beside the tuning database for every process) is read; while
# it reads over `SLOW_RATIO` x its quickest, the host is in a slow spell (the threads' meeting at
# each kernel launch slow: whole networks 1.5-2.3x slow for about 10 s), and the round waits,
# `PROBE_POLL_S` at a time, up to `PROBE_WAIT_S` in all for a set of rounds
# (`TVMBackend._await_quiet`). Each timing of `time` reads it too, before and after
# (`latency_sync_ratio`), and one read over `SLOW_RATIO` is taken again as one beside a busy
# process is (`BUSY_WAIT_S`, `BUSY_TRIES`). On this VM
# (2026-12-06; quickest kept 1.23 us) the probe read 1.30-1.80 us out of spells (up to 1.46x) and
# 2.10-2.70 us in them (1.71x and over); at 1.4x, bench-32's search took 28 timings again, kept
# ones read up to 1.45x. Out of the spells the same networks still range 20-25 % from one minute
# to the next, and a spell that slows them 1.9x with the probe at 1.3x was seen once: the probe
# does not see every slowing.
SLOW_RATIO = 1.55
PROBE_POLL_S = 1.0
PROBE_WAIT_S = 15.0

# A timing during which other processes (or the hypervisor) kept more than `BUSY_CORES` of a core
# busy beyond the cores TVM's threads leave free ran beside them (`kernels.cores.others_load`,
# from /proc/stat). On this VM (2026-12-06, three default-space networks and the untuned base):
# quiet timings read 0.00-0.02 cores taken; beside one busy process 1.00, and 1.5-2.4x slow;
# beside one busy a third of the time in 50 ms bursts 0.33, and their medians within 3 %. This
# VM's search timings read 1.4-2.2x their kernels' summed times in 1-5 of 18 trials. Such a
# timing is taken again `BUSY_WAIT_S` later, up to `BUSY_TRIES` more times (once more only, while
# the network before was busy through all of its: a host busy for good), and a quiet one is
# preferred (`TVMBackend.time`). Timings under `MIN_JUDGED_S` are not judged (/proc/stat counts in
# 10 ms ticks).
BUSY_CORES = 0.5
BUSY_TRIES = 4
BUSY_WAIT_S = 1.0
MIN_JUDGED_S = 0.1


class TVMBackend:
    """Compile, tune (missing kernels only), time and check networks on one target."""

    def __init__(
        self,
        folder: str | Path,
        target: str | dict | None = None,
        trials_per_task: int = 32,
        strategy: str = "replay-trace",
        repeats: int = 20,
        seed: int = 0,
        runner: dict | None = None,
        focus_trials: int = 0,
        focus_share: float = 0.8,
        light_trials: int | None = None,
        focus_budget: int = 0,
    ):
        load_tvm()
        self.target = host_target(target)
        cores = self.target.attrs.get("num-cores") if hasattr(self.target, "attrs") else None
        self.threads = runtime_threads(min(int(cores), host_cores()) if cores else None)
        self.spare_cores = max(0, host_cores() - self.threads)  # others may use these freely
        self.db = TuningDB(
            folder,
            self.target,
            trials_per_task,
            strategy,
            seed,
            runner,
            focus_trials,
            focus_share,
            light_trials,
            focus_budget,
        )
        self.repeats = repeats
        self.transfer = None  # kernels.tvm_transfer.Transfer, made on first use
        self._stranded: set[str] = set()  # kernel keys `_tune_stranded` tried
        self.library = KernelLibrary(self.target)  # each kernel compiled once in this process
        self.db.library = self.library  # tuning's winners linked as tuning built them
        self._sync = None  # `kernels.sync_probe.SyncProbe`, made on first use; False: unbuildable
        self._others: float | None = None  # cores others took in the last timing (`_time_once`)
        self._busy_host = False  # the last network's every timing was beside busy processes
        self.quiet = {
            "host_probes": 0,
            "host_slow_probes": 0,
            "host_wait_s": 0.0,
            "busy_timings": 0,  # timings beside another busy process (`time`)
            "busy_kept": 0,  # networks whose every timing was so
            "slow_timings": 0,  # timings the thread-sync probe read slow around (`time`)
        }
        self.networks_file = self.db.dir / "networks.jsonl"
        self.priced_file = self.db.dir / "priced.jsonl"

    # --- networks measured before --------------------------------------------------------------
    def networks(self) -> dict[str, dict]:
        """Networks measured with every kernel tuned, by network key (networks.jsonl: what the
        latency model is fitted on; a later row, timed in more rounds, wins)."""
        return jsonl_rows(self.networks_file)

    def priced(self) -> dict[str, dict]:
        """The figure a search first priced each network at, by network key (priced.jsonl: tuned,
        transferred or untuned; the first row wins)."""
        return jsonl_rows(self.priced_file, first=True)

    def _remember(
        self,
        compiled: dict,
        resolution: int,
        out: dict,
        rounds_ms: list[float] | None = None,
        priced: bool = False,
    ) -> None:
        """A network's kernels and whole-network time: in networks.jsonl when every kernel was
        tuned; in priced.jsonl too, with its source, when a search priced it (`priced`) and no
        search had priced it before."""
        full = out["latency_tuned_fraction"] == 1.0
        key = network_key(compiled["ops"], resolution)
        row = {
            "key": key,
            "resolution": resolution,
            "ops": LatencyModel.ops_to_json(compiled["ops"]),
            "kernels": sorted({k.key for k in compiled["kernels"]}),
            "ms": out["latency_ms"],
            "spread_ms": out["latency_spread_ms"],
            "rounds_ms": rounds_ms,
            "at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        if "latency_timings" in out:  # timed again for a wide spread or a busy host (`time`)
            row["timings"] = out["latency_timings"]
            row["busy_timings"] = out.get("latency_busy_timings", 0)
            row["slow_timings"] = out.get("latency_slow_timings", 0)
        if full:
            with open(self.networks_file, "a") as fh:
                fh.write(json.dumps(row) + "\n")
        if priced and key not in self.priced():
            row["source"], row["tuned_fraction"] = (
                out["latency_source"],
                out["latency_tuned_fraction"],
            )
            row["transferred"] = out.get("latency_kernels_transferred", 0)
            with open(self.priced_file, "a") as fh:
                fh.write(json.dumps(row) + "\n")

    def known(
        self, model: nn.Module, resolution: int, rounds: int = 1, search: bool = False
    ) -> dict | None:
        """What `measure` would return for a network measured before with every kernel tuned, in
        at least `rounds` rounds; with `search`, first the figure a search priced it at (so that
        a search prices a network the same way whatever was measured since: a warm cache does
        not change what a search sees of a network). None if there is none. A
        network is its operators and input size: another genome with the same ones is the same
        network."""
        key = network_key(torch_ops(model.eval(), resolution), resolution)
        row = self.priced().get(key) if search else None
        row = row or self.networks().get(key)
        if row is None or len(row.get("rounds_ms") or [row["ms"]]) < rounds:
            return None
        n = len(row["kernels"])
        return {
            "latency_ms": row_ms(row),
            "latency_spread_ms": row["spread_ms"],
            "latency_source": row.get("source", "tvm"),
            "latency_tuned_fraction": row.get("tuned_fraction", 1.0),
            "latency_kernels": n,
            "latency_kernels_transferred": row.get("transferred", 0),
            "latency_kernels_tuned_now": 0,
            "latency_compile_s": 0.0,
            "latency_transfer_s": 0.0,
            "latency_measured_at": row["at"],  # timed then, not now
        }

    # --- one network ---------------------------------------------------------------------------
    def measure(
        self,
        model: nn.Module,
        resolution: int,
        tune: bool = True,
        check: bool = True,
        remember: bool = True,
        transfer: bool = False,
    ) -> dict:
        """Tune the kernels the database lacks (if `tune`; else, if `transfer`, replay the nearest
        tuned kernels' schedules on them), compile, check against PyTorch, time. Returns the
        latency (ms), its spread, how many kernels were tuned and what it cost. With `transfer`, a
        network measured before is not measured again (`known`): the same network keeps the same
        figure, within a run and across runs (the warm cache), even once it is measured tuned
        (the tuned figure is reported beside it: `latency_tuned_ms`)."""
        if transfer and remember:
            seen = self.known(model, resolution, search=True)
            if seen is not None:
                return seen
        c = self.compile(model, resolution, tune=tune, check=check, transfer=transfer)
        out = {**self.time(c), **c["info"]}
        if remember:
            self._remember(c, resolution, out, priced=transfer)
        return out

    def kernel_sum(self, kernels) -> float | None:
        """The kernels' own times times their calls, summed (ms): tuned ones as the tuning timed
        them, the others as their transferred pick was timed; None if one has neither."""
        picked = self.transfer.seconds if self.transfer is not None else {}
        total = 0.0
        for k in kernels:
            secs = self.db.seconds(k) if self.db.record(k) is not None else picked.get(k.key)
            if secs is None:
                return None
            total += secs * k.calls
        return total * 1e3

    def measure_rounds(
        self,
        items: list[tuple[nn.Module, int]],
        rounds: int,
        tune: bool = True,
        progress=None,
        min_round_s: float = 3.0,
        one_session: bool = False,
        reuse: bool = False,
        transfer: bool = False,
        seeds=None,
        bounds=None,
    ) -> list[dict]:
        """Measure several networks in `rounds` interleaved rounds (each network timed once per
        round, in turn), each one's latency its quietest round's (`rounds_summary`); remembered
        with its rounds.

        On a shared machine the slow spells last seconds, so one timing of a network can stray far
        from its median (benchmarks/results/latency.md measures how far). Rounds spread each
        network's timings over the time the others take, so a spell costs the rounds it covers, and
        the least of them needs only one round outside it; a
        round shorter than `min_round_s` (few networks) waits out the rest, without the cores.

        `one_session`: the kernels all networks lack are tuned together first, in one
        MetaSchedule session (each session starts its runner process anew), instead of per
        network; each network's `latency_kernels_tuned_now` is then 0.

        `reuse`: a network measured before with every kernel tuned, in at least `rounds` rounds,
        is not measured again. `transfer` (without `tune`): kernels the database lacks get
        transferred schedules, as `compile` gives them. `seeds` (with `one_session`): the
        kernels' tuning also times their transferred schedules (`TuningDB.tune`). `bounds` (ms
        or None, one per network): what it should not time much over, else it is timed in more
        rounds (`time_rounds`): the front check gives each network its search figure."""
        prior = [self.known(m, r, rounds) if reuse else None for m, r in items]
        prior = [p if p and p["latency_source"] == "tvm" else None for p in prior]
        todo = [i for i, p in enumerate(prior) if p is None]
        if todo:
            done = self._rounds(
                [items[i] for i in todo],
                rounds,
                tune,
                progress,
                min_round_s,
                one_session,
                transfer,
                seeds,
                [bounds[i] for i in todo] if bounds else None,
            )
            for i, res in zip(todo, done):
                prior[i] = res
        return prior

    def _rounds(
        self,
        items,
        rounds,
        tune,
        progress,
        min_round_s,
        one_session,
        transfer=False,
        seeds=None,
        bounds=None,
    ) -> list[dict]:
        lowered = [self._lowered(m, r) for m, r in items] if one_session else [None] * len(items)
        if one_session and tune:
            self.db.tune(
                [k for low in lowered for k in low[2]],
                networks=[low[2] for low in lowered],
                seeds=seeds,
            )
        compiled = []
        for i, ((model, r), low) in enumerate(zip(items, lowered)):
            compiled.append(
                self.compile(model, r, tune=tune, check=False, transfer=transfer, lowered=low)
            )
            if progress:
                progress(i + 1, len(items))
        times = self.time_rounds(compiled, rounds, min_round_s, bounds)
        out = []
        for (_, r), c, t in zip(items, compiled, times):
            res = {**rounds_summary(t), "latency_rounds_ms": t, **c["info"]}
            self._remember(c, r, res, rounds_ms=t)
            out.append(res)
        return out

    def time_rounds(
        self, compiled: list[dict], rounds: int, min_round_s: float = 3.0, bounds=None
    ) -> list[list[float]]:
        """Each compiled network's times (ms) over `rounds` interleaved rounds (`measure_rounds`
        says why). `bounds` (ms or None, one per network): while a network's quietest round is
        over its bound by more than `BOUND_SLACK`, the networks over theirs are timed in more
        rounds, `EXTRA_ROUND_S` apart, `EXTRA_ROUNDS` at most."""
        times: list[list[float]] = [[] for _ in compiled]
        left = PROBE_WAIT_S  # `_await_quiet`'s waits, in all, for these rounds
        for k in range(max(1, rounds)):
            t0 = time.perf_counter()
            if compiled:
                left = self._quiet_within(left)
            self._round(compiled, times)
            if k + 1 < rounds:
                time.sleep(max(0.0, min_round_s - (time.perf_counter() - t0)))
        over = over_bounds(times, bounds)
        if over:
            log.warning(
                "latency: %d of %d networks timed over %.0f %% above the figure they were "
                "priced at (the host may be in a slow spell): timing them in up to %d more "
                "rounds, %.0f s apart",
                len(over),
                len(compiled),
                100 * BOUND_SLACK,
                EXTRA_ROUNDS,
                EXTRA_ROUND_S,
            )
        for _ in range(EXTRA_ROUNDS if over else 0):
            time.sleep(EXTRA_ROUND_S)
            left = self._quiet_within(left)
            self._round([compiled[i] for i in over], [times[i] for i in over])
            over = over_bounds(times, bounds)
            if not over:
                break
        if over:
            log.warning(
                "latency: %d networks still over their bound; kept their quietest", len(over)
            )
        return times

    def _round(self, compiled: list[dict], times: list[list[float]]) -> None:
        """One interleaved round: each network timed once, in turn, its figure appended."""
        for c, t in zip(compiled, times):
            time.sleep(0.2)  # TVM's thread pool spins for a moment after a run
            t.append(self.time(c)["latency_ms"])

    def compile(
        self,
        model: nn.Module,
        resolution: int,
        tune: bool = True,
        check: bool = True,
        transfer: bool = False,
        lowered: tuple | None = None,
    ) -> dict:
        """The candidate compiled for the target with whichever tuned kernels the database has (its
        missing ones tuned first if `tune`; else, if `transfer`, given the schedules of their
        nearest tuned kernels, `kernels.tvm_transfer`) on the Relax VM, with its seeded input: a
        compiled network that `time` can time again and again. `lowered`: what `_lowered` gave
        for it, if already done."""
        tvm = load_tvm()
        from tvm import relax

        t0 = time.time()
        model = model.eval()
        ops = torch_ops(model, resolution)
        prepared, shape, kernels = lowered or self._lowered(model, resolution)
        t_prep = time.time() - t0
        tuned_now, t1 = 0, time.time()
        if tune:
            tuned_now = self.db.tune(kernels)
        else:
            self.db.note_seen(kernels)
        t_tune = time.time() - t1
        self.db.reload()
        tuned = [k for k in kernels if self.db.record(k) is not None]
        database, moved, t_move = (self.db.database if tuned else None), set(), time.time()
        if transfer and len(tuned) < len(kernels):  # with pick: fastest, replays timed here
            database, moved, stranded = self._transferred_or_tuned(kernels)
            tuned_now += stranded
            tuned = [k for k in kernels if self.db.record(k) is not None]
        t2 = time.time()
        ex = self.library.executable(with_database(prepared, self.target, database))
        vm = relax.VirtualMachine(ex, tvm.cpu())
        t_build = time.time() - t2
        g = torch.Generator().manual_seed(0)
        x = torch.randn(*shape, generator=g)
        xt = tvm.runtime.tensor(x.numpy())
        frac = len(tuned) / max(1, len(kernels))
        n_moved = sum(1 for k in kernels if k.key in moved)
        info = {
            "latency_summed_ms": self.kernel_sum(kernels),  # None where a kernel has no time
            "latency_source": source_label(len(kernels), len(tuned), n_moved),
            "latency_tuned_fraction": frac,
            "latency_kernels_transferred": n_moved,
            "latency_kernels": len(kernels),
            "latency_kernels_tuned_now": tuned_now,
            "latency_tuning_s": t_tune,
            "latency_compile_s": t_prep + t_build,
            "latency_transfer_s": t2 - t_move,
        }
        if check:
            with torch.no_grad():
                ref = model(x).numpy()
            info["latency_max_abs_diff"] = float(np.abs(first_output(vm["main"](xt)) - ref).max())
        return {"vm": vm, "input": xt, "ops": ops, "kernels": kernels, "info": info}

    def _lowered(self, model: nn.Module, resolution: int) -> tuple:
        """The network imported into Relax (batch norm folded) and prepared, its input shape, and
        the kernels MetaSchedule would tune for it."""
        shape = (1, input_channels(model), resolution, resolution)
        prepared = prepared_module(fold_batch_norm(model.eval()), shape, self.target)
        return prepared, shape, extract_kernels(prepared, self.target)

    def tuned_before(self, model: nn.Module, resolution: int) -> set[str] | None:
        """The kernel keys of a network measured before with every kernel tuned (networks.jsonl),
        when the database still has them all: nothing to tune, and nothing lowered to say so.
        None otherwise."""
        row = self.networks().get(network_key(torch_ops(model.eval(), resolution), resolution))
        if row is None or not all(k in self.db.table for k in row["kernels"]):
            return None
        return set(row["kernels"])

    def kernels_of(self, model: nn.Module, resolution: int) -> list:
        """The kernels MetaSchedule would tune for a network (nothing compiled)."""
        return self._lowered(model, resolution)[2]

    def _transferred_or_tuned(self, kernels) -> tuple:
        """`_transferred`, with the kernels no tuned schedule replays on tuned first
        (`_tune_stranded`); and how many were so tuned."""
        database, moved = self._transferred(kernels)
        stranded = [
            k
            for k in kernels
            if k.key not in moved and k.key not in self._stranded and self.db.record(k) is None
        ]
        if not stranded or self.db.trials_per_task <= 0:
            return database, moved, 0
        n = self._tune_stranded(stranded)
        return (*self._transferred(kernels, count=False), n)  # the other kernels' picks kept

    def _tune_stranded(self, stranded: list) -> int:
        """Kernels no tuned schedule replays on (no tuned kernel of their structure, or none
        that replays), tuned here with `trials_per_task` trials each rather than timed with TVM's
        untuned schedule (several times a tuned kernel's time on this CPU: bench-28's one such
        kernel priced its network at 2.3x its checked figure). They then serve the next
        networks as transfer sources. Returns how many were tuned."""
        log.info(
            "latency: %d kernel%s no tuned schedule replays on (%s): tuning %s (%d trials each)",
            len(stranded),
            "" if len(stranded) == 1 else "s",
            ", ".join(k.name for k in stranded[:3]) + ("..." if len(stranded) > 3 else ""),
            "it" if len(stranded) == 1 else "them",
            self.db.trials_per_task,
        )
        self._stranded |= {k.key for k in stranded}  # tried once: one that fails stays untuned
        n = self.db.tune(stranded, focus=False)  # its records in this process's database now
        self.db.stats["tasks_stranded"] += n
        return n

    def _transferred(self, kernels, count: bool = True):
        """The tuning database united with transferred schedules for the kernels it lacks, and
        the keys of those that got one (`count`: into the transfer's stats)."""
        from tvm.s_tir import meta_schedule as ms

        from kernels.tvm_transfer import Transfer

        if self.transfer is None:
            self.transfer = Transfer()
        self.transfer.library = self.library
        mem, moved = self.transfer.database(self.db, kernels, self.target, count)
        return ms.database.UnionDatabase(self.db.database, mem), moved

    def time(self, compiled: dict) -> dict:
        """Median and interquartile spread (ms) of the compiled network over `repeats` runs, with
        the machine's cores held. A timing whose spread is over `RETIME_SPREAD` of its median is
        timed again, up to `RETIME_TRIES` more times; one that ran beside another busy process
        (`BUSY_CORES`) or in a slow spell (the thread-sync probe over `SLOW_RATIO`) is timed again
        `BUSY_WAIT_S` later, up to `BUSY_TRIES` more times. The lowest median of the timings
        neither busy nor slow is kept, else the lowest of all (`latency_timings`: how many timings
        it took; `latency_busy_timings`, `latency_slow_timings`: how many ran beside other busy
        processes, in a slow spell; `latency_others_cores`, `latency_sync_ratio`: the kept
        timing's readings)."""
        best, n, busy, slow, offs = None, 0, 0, 0, 0
        tries = 1 if self._busy_host else BUSY_TRIES
        while True:
            got, n = self._judged_timing(compiled), n + 1
            others, sync = got["latency_others_cores"], got["latency_sync_ratio"]
            crowded = others is not None and others > self.spare_cores + BUSY_CORES
            spell = sync is not None and sync > SLOW_RATIO
            busy, slow, off = busy + crowded, slow + spell, crowded or spell
            offs += off
            if best is None or (best[0], best[1]["latency_ms"]) > (off, got["latency_ms"]):
                best = (off, got)
            if off and offs <= tries:
                time.sleep(BUSY_WAIT_S)
                continue
            wide = got["latency_spread_ms"] > RETIME_SPREAD * got["latency_ms"]
            if off or not wide or n - offs > RETIME_TRIES:
                break
        self.quiet["busy_timings"] += busy
        self.quiet["slow_timings"] += slow
        self.quiet["busy_kept"] += best[0]
        self._busy_host = best[0]
        if best[0]:
            log.warning(
                "latency: every timing of this network ran beside other busy processes or in a "
                "slow spell (they took %s cores of %d; the thread-sync probe read %sx its "
                "quickest); kept the quickest",
                best[1]["latency_others_cores"],
                host_cores(),
                best[1]["latency_sync_ratio"],
            )
        out = {**best[1], "latency_timings": n, "latency_busy_timings": busy}
        return {**out, "latency_slow_timings": slow}

    def _judged_timing(self, compiled: dict) -> dict:
        """One timing's summary, with how many cores other processes kept busy meanwhile
        (`latency_others_cores`; None for a timing under `MIN_JUDGED_S`) and the thread-sync
        probe's higher reading just before and after it, over its quickest (`latency_sync_ratio`;
        None without the probe)."""
        self._others = None
        before = self._sync_ratio()
        times = self._time_once(compiled)
        others, after = self._others, self._sync_ratio()
        sync = None if before is None or after is None else round(max(before, after), 3)
        return {**summary(times), "latency_others_cores": others, "latency_sync_ratio": sync}

    def _sync_ratio(self) -> float | None:
        """The thread-sync probe's reading over its quickest (`kernels.sync_probe`); None where
        it cannot be built for the target (logged once)."""
        if self._sync is None:
            from kernels.sync_probe import SyncProbe

            self._sync = SyncProbe(self.target, self.db.dir)
        if self._sync is False:
            return None
        try:
            return self._sync.ratio()
        except Exception as e:  # noqa: BLE001 - the timing goes on unjudged
            log.warning("latency: the thread-sync probe cannot run here (%s); timings unjudged", e)
            self._sync = False
            return None

    def _await_quiet(self, max_wait: float | None = None) -> float | None:
        """Wait while the thread-sync probe reads over `SLOW_RATIO` x its quickest, up to
        `max_wait` s (`PROBE_WAIT_S`); None once quiet (or without the probe), else the last
        ratio. `time_rounds` gives its rounds `PROBE_WAIT_S` in all (`_quiet_within`): a spell
        of minutes costs a check 15 s, not 15 s a round."""
        max_wait = PROBE_WAIT_S if max_wait is None else max_wait
        t0 = time.perf_counter()
        while True:
            ratio = self._sync_ratio()
            if ratio is None:
                return None
            self.quiet["host_probes"] += 1
            if ratio <= SLOW_RATIO:
                return None
            self.quiet["host_slow_probes"] += 1
            if time.perf_counter() - t0 >= max_wait:
                if max_wait > 0:
                    log.warning("latency: the host stayed slow (probe %.1fx); timed anyway", ratio)
                return ratio
            time.sleep(PROBE_POLL_S)
            self.quiet["host_wait_s"] += PROBE_POLL_S

    def _quiet_within(self, left: float) -> float:
        """`_await_quiet` for at most `left` s; what is left of it after."""
        w0 = self.quiet["host_wait_s"]
        self._await_quiet(left)
        return max(0.0, left - (self.quiet["host_wait_s"] - w0))

    def _time_once(self, compiled: dict, timing: dict | None = None) -> np.ndarray:
        """The compiled network's run times (ms), with the machine's cores held: `repeats` runs
        of at least 20 ms, or as `timing` (TVM's time evaluator's number, repeat, min_repeat_ms)
        says."""
        tvm = load_tvm()
        timing = timing or {"number": 1, "repeat": self.repeats, "min_repeat_ms": 20}
        with core_lock().exclusive("measurement"), others_load() as others:
            res = compiled["vm"].time_evaluator("main", tvm.cpu(), **timing)(compiled["input"])
        judged = others["wall_s"] >= MIN_JUDGED_S
        self._others = others["cores"] if judged else None  # `time`, `BUSY_CORES`
        return np.asarray(res.results, dtype=float) * 1e3

    # --- the latency model ---------------------------------------------------------------------
    def fit_model(self, networks: list[dict]) -> LatencyModel:
        """A latency model from the kernels of `networks` (rows of networks.jsonl) and their
        whole-network times: only what those networks taught it."""
        self.db.reload()
        keys = set().union(*[set(n["kernels"]) for n in networks]) if networks else set()
        rows = []
        for key in keys:
            row = self.db.table.get(key)
            if row is None:
                continue
            op = op_of_kernel(row["name"], row["shapes"])
            if op is not None:
                rows.append((op, row["seconds"]))
        m = LatencyModel()
        m.fit_ops(rows)
        m.fit_networks([(LatencyModel.ops_from_json(n["ops"]), row_ms(n)) for n in networks])
        return m


def source_label(kernels: int, tuned: int, transferred: int) -> str:
    """`latency_source` of a network compiled with `tuned` MetaSchedule-tuned kernels and
    `transferred` replayed ones out of `kernels`: `tvm` when all were tuned."""
    if tuned == kernels:
        return "tvm"
    if tuned + transferred == kernels:
        return f"tvm-transferred-{transferred}-of-{kernels}"
    label = f"tvm-untuned-{kernels - tuned - transferred}-of-{kernels}"
    return label + (f"-transferred-{transferred}" if transferred else "")


def spread_genomes(space, n: int, seed: int, exclude: set[str] = frozenset()) -> list[dict]:
    """`n` distinct genomes spread over the space's FLOPs range: the full network first, then
    random genomes at evenly spaced FLOPs quantiles of a seeded sample."""
    rng = random.Random(seed)
    pool, seen = [space.full()], {space.genome_id(space.full())}
    for _ in range(50 * max(1, n)):
        g = space.sample(rng)
        gid = space.genome_id(g)
        if gid not in seen:
            seen.add(gid)
            pool.append(g)
        if len(pool) >= 20 * max(1, n):
            break
    pool = [g for g in pool if space.genome_id(g) not in exclude]
    if len(pool) <= n:
        return pool
    first, rest = pool[0], sorted(pool[1:], key=lambda g: space.cost(g)["flops"])
    idx = np.linspace(0, len(rest) - 1, n - 1).round().astype(int)
    return [first] + [rest[i] for i in dict.fromkeys(idx.tolist())]
