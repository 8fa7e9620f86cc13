"""Supernet pre-training (sandwich rule with in-place distillation), fine-tuning and scoring.

Sub-networks share the supernet's weights during pre-training: each is run through torch.func
on differentiable slices of the supernet's tensors, so every sub-network's inherited weights
are trained, not only the full network's (Once-for-All's sandwich rule)."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import math
import random
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from evaluators.data import Splits, at_resolution
from kernels.cores import core_lock
from spaces.builder import importance, kept_indices, sliced_state
from spaces.dims import Mask, Scale
from spaces.layers import GConv2d, mask_kernels_, quantize_, quantized_ste, weight_set_group
from spaces.space import Genome, Space

log = logging.getLogger(__name__)


@dataclass
class TrainRecipe:
    """How to train: epochs (or a fixed number of steps), optimiser, schedule."""

    epochs: float = 2.0
    steps: int | None = None
    batch_size: int = 64
    lr: float = 0.02
    optimizer: str = "sgd"
    schedule: str = "cosine"
    weight_decay: float = 5e-5
    momentum: float = 0.9
    label_smoothing: float = 0.0
    weight_training: str = "slb"  # low-bit weight sets: slb (Searching for Low-Bit Weights) or ste
    slb_t_start: float = 1.0
    slb_t_end: float = 100.0
    slb_lr: float = 0.05  # Adam's learning rate for the SLB logits and scales
    # after low-bit weights become hard: batch-norm statistics re-estimated on this many
    # training batches (all the split's if it has fewer; 0: kept as training left them)
    bn_batches: int = 20
    augment: str = "none"  # training augmentation (evaluators.data.AUGMENTS)
    device: str = "cpu"  # where training runs (the run's `device:`, resolved)
    amp: bool = False  # mixed precision (bfloat16 autocast) on CUDA
    # training batches channels-last on a CPU (`Family.channels_last`: the network allows it)
    channels_last: bool = False


def release_memory() -> None:
    """Hand the heap that training freed back to the system. glibc keeps freed blocks for
    reuse, so a process that trained once (the driver's pre-training, a worker's fine-tuning)
    would otherwise hold its peak of activation memory for the rest of the run."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _autocast(recipe: TrainRecipe):
    """bfloat16 autocast on CUDA when the recipe asks (no loss scaling needed); else nothing."""
    import contextlib

    if recipe.amp and str(recipe.device).startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _optimizer(params, r: TrainRecipe):
    if r.optimizer == "adam":
        return torch.optim.Adam(params, lr=r.lr, weight_decay=r.weight_decay)
    if r.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=r.lr, weight_decay=r.weight_decay)
    return torch.optim.SGD(
        params, lr=r.lr, momentum=r.momentum, nesterov=r.momentum > 0, weight_decay=r.weight_decay
    )


def _lr_at(r: TrainRecipe, step: int, total: int) -> float:
    if r.schedule == "cosine":
        return r.lr * 0.5 * (1 + math.cos(math.pi * step / max(1, total)))
    if r.schedule == "linear":
        return r.lr * (1 - step / max(1, total))
    return r.lr


def _total_steps(n: int, r: TrainRecipe) -> int:
    per_epoch = max(1, n // r.batch_size)
    return r.steps if r.steps else max(1, int(round(r.epochs * per_epoch)))


def _steps(split, r: TrainRecipe, opt, gen: torch.Generator):
    """Yield (step, images, labels) for the recipe's step count, on the recipe's device, each
    epoch a fresh seeded shuffle (augmented as the recipe says), setting the scheduled lr.

    The caller holds `core_lock().shared()` around each step's compute, so that a latency
    measurement never runs beside it, and never around callbacks: the lock must not be held
    while control is elsewhere (a Tune report blocks until the driver asks for more, forever if
    the scheduler stops the trial, and a measurement waiting on that step would wait forever)."""
    total, step, device = _total_steps(len(split), r), 0, torch.device(r.device)
    layout = _layout(r)
    while step < total:
        for xb, yb in split.batches(
            r.batch_size, shuffle=True, gen=gen, augment=r.augment, drop_last=True
        ):
            if step >= total:
                return
            for group in opt.param_groups:
                group["lr"] = _lr_at(r, step, total)
            xb = xb.to(device, non_blocking=True).contiguous(memory_format=layout)
            yield step, xb, yb.to(device, non_blocking=True)
            step += 1


def _layout(r: TrainRecipe) -> torch.memory_format:
    """The memory format of the recipe's training batches: channels-last on a CPU where the
    network allows it (`Family.channels_last`). PyTorch's CPU convolutions then keep it through
    the network, and a depthwise convolution's backward pass runs several times faster: a
    tinynet sub-network's training step took 41 % less time on one thread, 32 % on two, the
    supernet's sandwich step 21 % (benchmarks/results/train_layout.md). A GPU keeps the
    contiguous format."""
    cpu = torch.device(r.device).type == "cpu"
    return torch.channels_last if r.channels_last and cpu else torch.contiguous_format


def smallest_genome(space: Space, rng: random.Random) -> Genome:
    """A random genome pushed to the small end: scales at their low, masks at min keep ratio."""
    g = space.sample(rng)
    for n, d in space.dims.items():
        if isinstance(d, Scale):
            g[n] = d.low
        elif isinstance(d, Mask):
            g[n] = Mask(
                n, length=d.length, min_keep=d.min_keep, keep_prob=(d.keep_prob[0],) * 2
            ).sample(rng)
        elif d.target == "kernel":
            g[n] = min(d.options)
    return space.canonical(g)


def sandwich_genomes(space: Space, rng: random.Random, n: int) -> list[Genome]:
    """A sandwich step's `n` genomes: the full network, the smallest, then `n - 2` random ones,
    drawn from `rng` in that order."""
    genomes = [space.full()] + ([smallest_genome(space, rng)] if n > 1 else [])
    return genomes + [space.sample(rng) for _ in range(max(0, n - 2))]


def pretrain_supernet(
    space: Space, data: Splits, recipe: TrainRecipe, seed: int, sandwich: int = 4, progress=None
) -> tuple[nn.Module, dict]:
    """Train the supernet with the sandwich rule: the full network on labels, the smallest and
    `sandwich - 2` random sub-networks distilled from it, every batch. A family whose
    sub-networks do not share weights (a user's network) trains its full network alone."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    sup = space.supernet(seed).to(recipe.device)
    sup.train()
    opt = _optimizer(sup.parameters(), recipe)
    total = _total_steps(len(data.train), recipe)
    full = space.full()
    res, shared = space.arch(full).resolution, space.family.shares_weights
    fam_groups = space.family.groups()
    t0, imp, lock = time.time(), importance(sup), core_lock()
    with SandwichThreads(sup, recipe, sandwich if shared else 1) as threads:
        for step, xb, yb in _steps(data.train, recipe, opt, gen):
            with lock.shared(), _autocast(recipe):  # no latency measurement beside a training step
                if step % 20 == 0:
                    imp = importance(sup)  # keep "most important filters" current for width cuts
                opt.zero_grad(set_to_none=True)
                if shared:
                    genomes = sandwich_genomes(space, rng, sandwich)
                    cut = (fam_groups, imp)
                    ce = threads.backward(space, sup, genomes, xb, yb, cut, recipe)
                else:  # a user's network: the full network alone, on labels
                    logits = sup(at_resolution(xb, res)).float()
                    loss = F.cross_entropy(logits, yb, label_smoothing=recipe.label_smoothing)
                    loss.backward()
                    ce = loss.item()
                nn.utils.clip_grad_norm_(sup.parameters(), 5.0)
                opt.step()
            if progress:
                progress(step + 1, total, ce)  # the full network's cross-entropy
    # the supernet's own BN statistics: those of the full network
    recalibrate_bn(sup, data.train, space.arch(full).resolution)
    acc, loss = evaluate(sup, data.val, space.arch(full).resolution)
    sup.cpu()
    release_memory()
    secs = round(time.time() - t0, 2)
    info = {"steps": total, "train_time_s": secs, "full_val_acc": acc, "full_val_loss": loss}
    log.info(
        "supernet pre-trained: %d steps in %.1f s, full network val acc %.4f", total, secs, acc
    )
    return sup, info


def _sandwich_backward(space, sup, genomes, xb, yb, importance_of, recipe: TrainRecipe) -> float:
    """One batch's gradients: the full network (first) on labels, the others distilled from it
    in place; `importance_of` is (the family's groups, filter importance) for width cuts.
    Returns the full network's cross-entropy."""
    teacher, ce = None, float("nan")
    for k, g in enumerate(genomes):
        logits = _subnet_logits(space, sup, g, xb, importance_of)
        loss = _sandwich_loss(logits, yb, teacher, recipe)
        if k == 0:
            teacher, ce = F.softmax(logits.detach(), 1), loss.item()
        loss.backward()
    return ce


def _sandwich_loss(logits, yb, teacher, recipe: TrainRecipe) -> torch.Tensor:
    """The full network's loss on the labels (no `teacher` yet), a sub-network's distilled in
    place from the full network's output (`teacher`, its softmax)."""
    if teacher is None:
        return F.cross_entropy(logits, yb, label_smoothing=recipe.label_smoothing)
    return F.kl_div(F.log_softmax(logits, 1), teacher, reduction="batchmean")


def _subnet_logits(space, sup, genome, xb, importance_of) -> torch.Tensor:
    arch = space.arch(genome)
    idx = kept_indices(arch, *importance_of)
    return run_subnet(space, sup, arch, at_resolution(xb, arch.resolution), idx).float()


class SandwichThreads:
    """Where a sandwich step's sub-networks run: in turn (`_sandwich_backward`), or on a CPU with
    more torch threads than one, side by side on as many Python threads as the step has
    sub-networks (at most one a torch thread), each sub-network's operators on its share of the
    torch threads. PyTorch's operators release Python's lock, and one of these small
    convolutions gains little from a second thread: on this 2-core host a sub-network's step
    took about as long on one thread as on two, so the default sandwich step (4 sub-networks)
    took 30 % less time side by side, the default pre-training about 10 % less
    (benchmarks/results/sandwich_threads.md).

    Each sub-network's gradients are computed apart (`torch.autograd.grad`) and summed in the
    sandwich's order, so the result does not depend on which thread finished first: the same
    seed gives the same supernet. A network with active dropout draws random numbers on
    whichever thread runs it, so it keeps the one-by-one step."""

    def __init__(self, sup: nn.Module, recipe: TrainRecipe, subnets: int):
        cpu = torch.device(recipe.device).type == "cpu"
        random_ops = any(
            isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in sup.modules()
        )
        total = torch.get_num_threads()
        self.workers = min(subnets, total) if cpu and not random_ops else 1
        self.per = max(1, total // self.workers)
        self.total, self._pool = total, None

    def __enter__(self) -> SandwichThreads:
        """The threads up (and this thread's torch threads its share) until the exit."""
        if self.workers > 1:
            from concurrent.futures import ThreadPoolExecutor

            torch.set_num_threads(self.per)
            self._pool = ThreadPoolExecutor(
                self.workers - 1, "sandwich", torch.set_num_threads, (self.per,)
            )
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
            torch.set_num_threads(self.total)

    def backward(self, space, sup, genomes, xb, yb, importance_of, recipe) -> float:
        """`_sandwich_backward`'s gradients (into each parameter's `.grad`) and its return."""
        if self._pool is None or len(genomes) < 2:
            return _sandwich_backward(space, sup, genomes, xb, yb, importance_of, recipe)
        params = [p for p in sup.parameters() if p.requires_grad]
        step = _SideBySide(space, sup, genomes, xb, yb, importance_of, recipe, params)
        futures = [self._pool.submit(step.drain) for _ in range(self.workers - 1)]
        try:
            step.drain()
        finally:
            for f in futures:
                f.result()
        for i, p in enumerate(params):  # summed in the sandwich's order, as backward() would
            parts = [g[i] for g in step.grads if g[i] is not None]
            if parts:
                acc = parts[0]
                for g in parts[1:]:
                    acc = acc + g
                p.grad = acc if p.grad is None else p.grad + acc
        return step.ce


def run_subnet(space: Space, sup: nn.Module, arch, x: torch.Tensor, idx) -> torch.Tensor:
    """Forward a sub-network on differentiable slices of the supernet's weights."""
    with _META.lend(space, arch) as sub:
        return _run_on_slices(sub, sup, arch, x, idx)


class _MetaModules:
    """Sub-network modules on the meta device (no tensors of their own), kept by architecture:
    building one is about 12 ms of Python for the full tinynet network, which pre-training runs
    every step. A module is lent to one caller at a time (`torch.func.functional_call` puts the
    state in it while it runs). Each entry keeps its family, so that the family's id in the key
    stays its own while the entry lives."""

    def __init__(self, keep: int = 8):
        self.keep, self._free, self._lock = keep, OrderedDict(), threading.Lock()

    @contextlib.contextmanager
    def lend(self, space: Space, arch):
        key, sub = (id(space.family), repr(arch)), None
        with self._lock:
            free = self._free.get(key, (None, []))[1]
            if free:
                sub = free.pop()
        if sub is None:
            with torch.device("meta"):
                sub = space.family.module(arch)
        try:
            yield sub
        finally:
            with self._lock:
                self._free.setdefault(key, (space.family, []))[1].append(sub)
                self._free.move_to_end(key)
                while len(self._free) > self.keep:
                    self._free.popitem(last=False)


_META = _MetaModules()


def _run_on_slices(sub: nn.Module, sup: nn.Module, arch, x: torch.Tensor, idx) -> torch.Tensor:
    sub.train(sup.training)
    state = sliced_state(sub, sup, idx)
    # batch norm would update sliced copies of the running stats in place: give it fresh ones
    state = {
        k: (v.clone() if k.endswith(("running_mean", "running_var", "num_batches_tracked")) else v)
        for k, v in state.items()
    }
    for name, m in sub.named_modules():  # weight sets: train through their quantisation
        if (
            isinstance(m, GConv2d)
            and m.qgroup is not None
            and arch.quant.get(m.qgroup, "float") != "float"
        ):
            state[f"{name}.weight"] = quantized_ste(state[f"{name}.weight"], arch.quant[m.qgroup])
    return functional_call(sub, state, (x,))


class _SideBySide:
    """One sandwich step shared by threads: each takes the next sub-network in turn, runs it and
    keeps its gradients; the distilled ones wait for the full network's output (the first)."""

    def __init__(self, space, sup, genomes, xb, yb, importance_of, recipe, params):
        self.space, self.sup, self.genomes, self.xb, self.yb = space, sup, genomes, xb, yb
        self.cut, self.recipe, self.params = importance_of, recipe, params
        self.grads: list = [None] * len(genomes)
        self.ce, self.teacher = float("nan"), None
        self._next, self._take, self._ready = (
            iter(range(len(genomes))),
            threading.Lock(),
            threading.Event(),
        )

    def drain(self) -> None:
        while True:
            with self._take:
                k = next(self._next, None)
            if k is None:
                return
            self.grads[k] = self._one(k)

    def _one(self, k: int):
        try:
            logits = _subnet_logits(self.space, self.sup, self.genomes[k], self.xb, self.cut)
            if k == 0:
                loss = _sandwich_loss(logits, self.yb, None, self.recipe)
                self.teacher, self.ce = F.softmax(logits.detach(), 1), loss.item()
        finally:
            if k == 0:
                self._ready.set()  # also on an error: the others then raise, not wait
        if k > 0:
            self._ready.wait()
            if self.teacher is None:
                raise RuntimeError("the sandwich step's full network failed")
            loss = _sandwich_loss(logits, self.yb, self.teacher, self.recipe)
        return torch.autograd.grad(loss, self.params, allow_unused=True)


def _held(items):
    """`items`, each fetched (a batch decoded) and used by the caller's loop body while the
    machine's cores are held shared, so that a latency measurement never runs beside an
    evaluation: a Ray worker scores and recalibrates its candidate while the latency service
    times it (`LatencyProvider.measure_later`). Only for loop bodies that compute: the lock must
    not be held while control is elsewhere. Use under `contextlib.closing`."""
    lock, it = core_lock(), iter(items)
    while True:
        with lock.shared():
            try:
                item = next(it)
            except StopIteration:
                return
            yield item


def _next_held(it, lock):
    """The next item of `it` (the next batch, decoded) with the cores held shared; None at the
    end."""
    with lock.shared():
        return next(it, None)


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module, data, resolution: int, batches: int = 8, bs: int = 128
) -> None:
    """Reset batch-norm statistics to the model's own on training data (OFA's recalibration):
    `data` is a split (a seeded sample of it is used) or a tensor of images."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    if not bns:
        return
    x = data if isinstance(data, torch.Tensor) else data.take(batches * bs, seed=0)[0]
    if isinstance(data, torch.Tensor):
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
        x = x[perm[: min(batches, max(1, len(x) // bs)) * bs]]
    was, device = model.training, _device_of(model)
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    starts = range(0, max(1, len(x) - bs + 1) if len(x) >= bs else 1, bs)
    with contextlib.closing(_held(starts)) as held:  # closed (lock released) also on an error
        for i in held:
            model(at_resolution(x[i : i + bs].to(device), resolution))
    for m, mo in zip(bns, saved):
        m.momentum = mo
    model.train(was)


@torch.no_grad()
def evaluate(model: nn.Module, split, resolution: int, bs: int = 256) -> tuple[float, float]:
    """(top-1 accuracy, mean cross-entropy) in eval mode over a split (or (images, labels))."""
    was, device = model.training, _device_of(model)
    model.eval()
    batches = [split] if isinstance(split, tuple) else split.batches(bs)
    correct, loss, n = 0, 0.0, 0
    with contextlib.closing(_held(batches)) as held:  # closed (lock released) also on an error
        for xb, yb in held:
            for i in range(0, len(xb), bs):
                x, y = xb[i : i + bs].to(device), yb[i : i + bs].to(device)
                logits = model(at_resolution(x, resolution)).float()
                loss += float(F.cross_entropy(logits, y, reduction="sum"))
                correct += int((logits.argmax(1) == y).sum())
                n += len(y)
    model.train(was)
    return correct / max(1, n), loss / max(1, n)


class _WeightSets:
    """How a model's low-bit weight sets train: by SLB (logits over each set's values, with
    their own Adam) or by straight-through quantisation (`ste`, and always for int8)."""

    def __init__(self, model: nn.Module, quant: dict[str, str] | None, recipe: TrainRecipe):
        from evaluators.slb import SLBTrainer, slb_layers

        quant = quant or {}
        self.recipe, self.slb, self.slb_opt = recipe, None, None
        if quant and recipe.weight_training == "slb":
            layers = slb_layers(model, quant)
            if layers:
                self.slb = SLBTrainer(layers, recipe.slb_t_start, recipe.slb_t_end)
        slb_ids = {id(m) for m, _ in self.slb.layers} if self.slb else set()
        self.qconvs = [
            (m, quant.get(weight_set_group(m), "float"))
            for m in model.modules()
            if weight_set_group(m) is not None
            and quant.get(weight_set_group(m), "float") != "float"
            and id(m) not in slb_ids
        ]
        slb_params = [p for q in (self.slb.params if self.slb else []) for p in q.parameters()]
        ids = {id(p) for p in slb_params}
        self.weights = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
        if self.slb:  # logits over value sets have their own scale: Adam, no weight decay
            self.slb_opt = torch.optim.Adam(slb_params, lr=recipe.slb_lr)
        self._shadow: list[torch.Tensor] = []

    def before_forward(self, step: int, total: int) -> None:
        """SLB's temperature and learning rate (the recipe's schedule); STE convs quantised."""
        r = self.recipe
        if self.slb:
            self.slb.set_progress(step / max(1, total - 1))
            self.slb_opt.param_groups[0]["lr"] = r.slb_lr * _lr_at(r, step, total) / r.lr
            self.slb_opt.zero_grad(set_to_none=True)
        self._shadow = [m.weight.detach().clone() for m, _ in self.qconvs]
        for m, ws in self.qconvs:
            quantize_(m.weight, ws)

    @torch.no_grad()
    def after_backward(self) -> None:
        """Straight-through: the float weights take the gradient of their quantised copies."""
        for (m, _), w in zip(self.qconvs, self._shadow):
            m.weight.copy_(w)

    def step(self) -> None:
        if self.slb_opt is not None:
            self.slb_opt.step()

    @property
    def low_bit(self) -> bool:
        return bool(self.slb or self.qconvs)

    def finish(self, model: nn.Module) -> None:
        """Every low-bit conv ends exactly on its set (the hard assignment); pruned kernels
        (DKP) stay exactly zero."""
        if self.slb:
            self.slb.finalize()
        for m, ws in self.qconvs:
            quantize_(m.weight, ws)
        mask_kernels_(model)


def fine_tune(
    model: nn.Module,
    data: Splits,
    resolution: int,
    recipe: TrainRecipe,
    seed: int,
    quant: dict[str, str] | None = None,
    on_epoch=None,
    skip_last_epoch_callback: bool = False,
) -> dict:
    """Fine-tune in place. Convs with a low-bit weight set train by SLB (logits over the set's
    values, rising temperature; `weight_training: slb`, the default) or through a
    straight-through estimator (`ste`, and always for int8); either way they end exactly on
    their set. After that hard assignment the batch-norm statistics are re-estimated for the
    hard weights (`recipe.bn_batches` training batches, forward passes in train mode with a
    cumulative average, no weight updates), as SLB's last step. Raises FloatingPointError on a
    NaN loss."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model.to(recipe.device)
    sets = _WeightSets(model, quant, recipe)
    opt = _optimizer(sets.weights, recipe)
    n = len(data.train)
    total = _total_steps(n, recipe)
    per_epoch = max(1, n // recipe.batch_size)
    model.train()
    last = float("nan")
    lock = core_lock()
    steps = _steps(data.train, recipe, opt, gen)
    while (item := _next_held(steps, lock)) is not None:  # decoding, too, never beside a timing
        step, xb, yb = item
        with lock.shared():  # never around on_epoch, which may block (a Tune report)
            sets.before_forward(step, total)
            with _autocast(recipe):
                logits = model(at_resolution(xb, resolution))
                loss = F.cross_entropy(logits.float(), yb, label_smoothing=recipe.label_smoothing)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            sets.after_backward()
            opt.step()
            sets.step()
            last = loss.item()
        epoch_end = (step + 1) % per_epoch == 0
        if on_epoch and epoch_end and not (skip_last_epoch_callback and step + 1 >= total):
            on_epoch((step + 1) // per_epoch, model)
    sets.finish(model)
    if sets.low_bit and recipe.bn_batches > 0:
        with lock.shared():
            recalibrate_bn(model, data.train, resolution, recipe.bn_batches, recipe.batch_size)
    release_memory()
    return {"steps": total, "final_train_loss": last}
