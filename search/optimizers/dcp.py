"""DCP: discrimination-aware channel pruning (Zhuang et al., NeurIPS 2018; journal version with
the adaptive stopping rule) on the `resnet` family.

DCP needs gradients, so it gets the model and the data through an explicit argument
(`prepare(evaluator, run_dir)`, called by the run after the supernet is ready): it prunes the
full network, then asks for the one genome it found, which the evaluator fine-tunes and scores
like any other trial. What it does, stage by stage (P = the family's stages):

1. A discrimination-aware loss at the end of stage p: batch norm, ReLU, global pooling and a
   linear classifier on the stage's output. The pruned model and that head are fine-tuned with
   L_f + L_S^p (the final and the stage's cross-entropy), `stage_epochs` epochs.
2. For each block of the stage, the channels entering its second conv (the block's inner
   channel group) are chosen greedily: starting from none, add the channel whose weights have
   the largest gradient norm of L = L_M + lambda * L_S^p (L_M: mean squared distance between the
   conv's output and the baseline network's), re-optimise the selected weights by SGD
   (`inner_steps`), and stop when |L(W^{t-1}) - L(W^t)| / L(W^0) <= epsilon (the adaptive rule
   of the journal version) or at `max_keep` of the channels.

DKP (`granularity: kernel`, the journal version's kernel pruning) makes the same greedy choice
over the conv's single kernels W[o, i, :, :] (input-output channel pairs) instead of its input
channels: the kernels are ranked by the norm of their gradient of the same L, the selected ones
re-optimised after each addition, and the same adaptive rule (or `max_keep` of the kernels)
stops. One kernel per step over cout x cin pairs would take thousands of steps, so each step adds
the top `kernel_batch` fraction of the layer's kernels (2.5 %: at most 40 steps a layer); the rule
compares whole steps, so at one epsilon a larger batch keeps more kernels. Input
channels none of whose kernels are kept leave the genome's mask (a physically smaller network,
as DCP); the pruned kernels of the channels that stay are a `kernel_mask` buffer on the conv
(spaces.layers.GConv2d), which the forward pass applies (they get no gradient, so fine-tuning
keeps them at zero), which the builder slices with the weight, and which every state dict
carries (the supernet, the trial's weights, exports). `dcp.json` gives the genome's dense cost
(`cost`, as `space.cost` and the trial's `flops` count it) and its kernel-sparse cost
(`sparse_cost`, the pruned kernels' weights and multiply-adds not counted).

The pruned model's weights (the re-optimised convs and the stage fine-tuning) are written into
the run's supernet in memory, so the trial inherits exactly DCP's weights; they are also saved
as `dcp_supernet.pt` in the run folder (a resumed run reloads them). `dcp.json` records every
layer's selection: channels kept, the loss curve, why it stopped. The residual-tied stage
groups are not pruned (as in the paper's ResNets)."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from spaces.builder import kernel_sparse_cost
from spaces.errors import ConfigError

from search.optimizers.base import Optimizer

log = logging.getLogger(__name__)

STATE_FILE = "dcp_supernet.pt"


class DCPOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    epsilon: float = Field(0.01, gt=0, description="adaptive stopping: |L(W^{t-1}) - L(W^t)| / L(W^0) <= epsilon")
    max_keep: float = Field(1.0, gt=0, le=1, description="at most this fraction of a layer's channels")
    discrimination_weight: float = Field(1.0, ge=0, description="lambda in L = L_M + lambda * L_S")
    stage_epochs: float = Field(1.0, ge=0, description="fine-tuning with the stage's discrimination loss before its selection")
    stage_lr: float = Field(0.01, gt=0)
    head_epochs: int = Field(10, ge=0, description="passes training each stage's classifier alone, on cached features")
    head_images: int = Field(2048, ge=16, description="training images those passes use")
    select_images: int = Field(256, ge=8, description="training images the selection's losses are computed on")
    inner_steps: int = Field(3, ge=0, description="Adam steps re-optimising the selected channels' weights after each addition")
    inner_lr: float = Field(0.005, gt=0, description="Adam's learning rate for the re-optimisation")
    inner_retries: int = Field(3, ge=0, description="times a re-optimisation that lowers nothing is retried "
                               "with a 4x smaller learning rate")
    batch_size: int = Field(128, ge=1)
    granularity: Literal["channel", "kernel"] = Field(
        "channel", description="channel: DCP; kernel: DKP, the same selection over single kernels W[o, i]")
    kernel_batch: float = Field(0.025, gt=0, le=1, description="kernel granularity: the fraction of a layer's "
                                "cout x cin kernels added per greedy step (at least one): at most 1 / kernel_batch steps")


class StageHead(nn.Module):
    """The discrimination-aware loss's classifier at the end of a stage."""

    def __init__(self, channels: int, classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x):
        return self.fc(F.relu(self.bn(x)).mean((2, 3)))


def _stem(model, x):
    return F.relu(model.bn(model.conv(x)))


def _run_blocks(blocks, x):
    for b in blocks:
        x = b(x)
    return x


class DCP(Optimizer):
    """Prune the full network with DCP once, then ask for the result."""

    name = "dcp"
    Options = DCPOptions
    needs_model = True  # gets the evaluator's network and data through prepare()

    @classmethod
    def check_space(cls, space, file):
        if space.family.kind != "resnet":
            raise ConfigError(file, "optimizer.name", f"dcp prunes the resnet family's blocks; space {space.name!r} is {space.family.kind}")
        inner = [n for n in space.dims if n.startswith("mask.") and ".b" in n]
        if not inner:
            raise ConfigError(file, "optimizer.name", f"dcp needs filter masks on the blocks' inner groups (mask per: group) in space {space.name!r}")

    @classmethod
    def check_options(cls, space, options, file):
        if "kernel_batch" in options.model_fields_set and options.granularity != "kernel":
            raise ConfigError(file, "optimizer.options.kernel_batch", "applies to granularity: kernel (DKP) only")

    def __init__(self, space, objectives, constraints, seed, options=None):
        super().__init__(space, objectives, constraints, seed, options)
        self.check_space(space, None)
        self.result: dict[str, Any] | None = None
        self.genome = None
        self.run_dir: Path | None = None
        self.asked = False

    def attach(self, run_dir) -> None:
        self.run_dir = Path(run_dir)

    # --- the method --------------------------------------------------------------------------
    def prepare(self, evaluator) -> None:
        """Run DCP on the evaluator's pre-trained network and data (or reload a finished run's
        result), and put the pruned weights into its supernet."""
        space, sup, data = evaluator.space, evaluator.supernet, evaluator.data
        saved = self.run_dir / STATE_FILE if self.run_dir else None
        if saved is not None and saved.exists() and (self.run_dir / "dcp.json").exists():
            sup.load_state_dict(torch.load(saved, weights_only=True))
            self.result = json.loads((self.run_dir / "dcp.json").read_text())
            self.genome = space.from_json(self.result["genome"])
            log.info("dcp: reloaded the pruned network from %s", saved)
            return
        t0 = time.time()
        self.genome, model, self.result = discrimination_aware_pruning(space, sup, data, self.options, self.seed)
        sup.load_state_dict(model.state_dict())
        sup.eval()
        self.result["time_s"] = round(time.time() - t0, 1)
        self.result["genome"] = space.to_json(self.genome)
        self.result["cost"] = space.cost(self.genome)
        self.result["full_cost"] = space.cost(space.full())
        if self.options.granularity == "kernel":  # the pruned kernels' weights and FLOPs not counted
            self.result["sparse_cost"] = kernel_sparse_cost(space, self.genome, space.build(self.genome, sup))
        if self.run_dir is not None:
            torch.save(sup.state_dict(), saved)
            (self.run_dir / "dcp.json").write_text(json.dumps(self.result, indent=2))

    def ask(self):
        if self.genome is None:
            raise RuntimeError("dcp: prepare(evaluator) was not called; the run calls it before asking")
        if self.asked or self.space.genome_id(self.genome) in self.seen:
            return None
        self.asked = True
        self.seen.add(self.space.genome_id(self.genome))
        return self.genome

    def tell(self, record) -> None:
        super().tell(record)
        self.seen.add(record.genome_id)

    def finish(self, run_dir) -> None:
        if self.result is not None:
            (Path(run_dir) / "dcp.json").write_text(json.dumps(self.result, indent=2))


def discrimination_aware_pruning(space, supernet: nn.Module, data, o: DCPOptions, seed: int):
    """Returns (genome, pruned full-shape model with unselected channels zeroed, report)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    full = space.full()
    baseline = space.build(full, supernet).eval()
    for p in baseline.parameters():
        p.requires_grad_(False)
    model = space.build(full, supernet)
    x_train, y_train = data.train
    classes = int(data.num_classes)
    sel = torch.randperm(len(x_train), generator=gen)[:o.select_images]
    xs, ys = x_train[sel], y_train[sel]
    genome = dict(full)
    masks: dict[str, torch.Tensor] = {}  # group -> kept input channels of conv2 (1/0)
    report: dict[str, Any] = {"epsilon": o.epsilon, "layers": {}}
    kernel = o.granularity == "kernel"
    if kernel:
        report.update(granularity="kernel", kernel_batch=o.kernel_batch)

    def enforce():
        with torch.no_grad():
            for si, stage in enumerate(model.stages):
                for bj, block in enumerate(stage):
                    m = masks.get(f"s{si + 1}.b{bj}")
                    if m is not None:
                        block.conv2.weight.mul_(m.view(1, -1, 1, 1) if m.dim() == 1 else m[:, :, None, None])

    for si, stage in enumerate(model.stages):
        group_stage = f"s{si + 1}"
        head = StageHead(stage[-1].conv2.out_channels, classes)
        # 1. the discrimination-aware classifier first learns on the stage's current features
        #    (an untrained head's gradients would pick channels at random), then the network
        #    and the head are fine-tuned with the final and this stage's loss
        _train_head(model, head, si, data, o, gen)
        if o.stage_epochs > 0:
            _stage_finetune(model, head, si, data, o, gen, enforce)
        model.eval()
        head.eval()
        for p in list(model.parameters()) + list(head.parameters()):
            p.requires_grad_(False)  # only the conv being pruned is optimised below
        for bj, block in enumerate(stage):
            group = f"{group_stage}.b{bj}"
            dim = f"mask.{group}"
            if dim not in space.dims:
                continue
            t0 = time.time()
            if kernel:
                kmask, info = _select_kernels(model, baseline, head, si, bj, xs, ys, o, space.dims[dim].min_keep)
                block.conv2.kernel_mask = kmask  # the forward pass applies it: later training keeps zeros
                masks[group] = kmask
                keep = (kmask.sum(0) > 0).float()
            else:
                keep, info = _select_channels(model, baseline, head, si, bj, xs, ys, o, space.dims[dim].min_keep)
                masks[group] = keep
            enforce()
            genome[dim] = tuple(int(v) for v in keep.tolist())
            info["time_s"] = round(time.time() - t0, 2)
            report["layers"][group] = info
            kernels = f"{info['kept_kernels']} of {info['kernels']} kernels, " if kernel else ""
            log.info("dcp: %s keeps %s%d of %d channels (%s, %.1f s)", group, kernels, info["kept"], info["channels"],
                     info["stopped"], info["time_s"])
        for p in model.parameters():
            p.requires_grad_(True)
    model.eval()
    if kernel:
        report["kernels"] = sum(v["kernels"] for v in report["layers"].values())
        report["kept_kernels"] = sum(v["kept_kernels"] for v in report["layers"].values())
    return space.validate(genome), model, report


def _train_head(model, head, si, data, o: DCPOptions, gen) -> None:
    x, y = data.train
    idx = torch.randperm(len(x), generator=gen)[:o.head_images]
    model.eval()
    feats = []
    with torch.no_grad():
        for i in range(0, len(idx), 256):
            h = _stem(model, x[idx[i:i + 256]])
            for sj in range(si + 1):
                h = _run_blocks(model.stages[sj], h)
            feats.append(h)
    f, t = torch.cat(feats), y[idx]
    opt = torch.optim.Adam(head.parameters(), lr=0.01)
    head.train()
    for _ in range(o.head_epochs):
        perm = torch.randperm(len(f), generator=gen)
        for i in range(0, len(f), 128):
            b = perm[i:i + 128]
            loss = F.cross_entropy(head(f[b]), t[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def _stage_finetune(model, head, si, data, o: DCPOptions, gen, enforce) -> None:
    x, y = data.train
    steps = max(1, math.ceil(o.stage_epochs * len(x) / o.batch_size))
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=o.stage_lr, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    head.train()
    perm = torch.randperm(len(x), generator=gen)
    for step in range(steps):
        i = (step * o.batch_size) % len(x)
        b = perm[i:i + o.batch_size]
        if len(b) < 2:
            b = perm[:o.batch_size]
        h = _stem(model, x[b])
        for sj, stage in enumerate(model.stages):
            h = _run_blocks(stage, h)
            if sj == si:
                stage_logits = head(h)
        loss = F.cross_entropy(model.classifier(h.mean((2, 3))), y[b]) + F.cross_entropy(stage_logits, y[b])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        enforce()


def _layer_loss(model, baseline, head, si, bj, xs, ys, o: DCPOptions):
    """The joint loss L = L_M + lambda * L_S of block bj's second conv as a function of its weight
    (and of a mask over its input channels), and the conv."""
    block = model.stages[si][bj]
    rest = list(model.stages[si])[bj + 1:]
    with torch.no_grad():
        h = _stem(model, xs)
        hb = _stem(baseline, xs)
        for sj in range(si):
            h, hb = _run_blocks(model.stages[sj], h), _run_blocks(baseline.stages[sj], hb)
        h = _run_blocks(list(model.stages[si])[:bj], h)
        hb = _run_blocks(list(baseline.stages[si])[:bj], hb)
        bb = baseline.stages[si][bj]
        target = bb.conv2(F.relu(bb.bn1(bb.conv1(hb))))  # the baseline's output of this conv
        feats = F.relu(block.bn1(block.conv1(h)))  # what the pruned model feeds it
        shortcut = h if block.shortcut is None else block.shortcut(h)
    conv = block.conv2
    scale = float(target.pow(2).mean()) or 1.0

    def loss_at(weight, m):
        out = F.conv2d(feats * m.view(1, -1, 1, 1), weight, None, conv.stride, conv.padding)
        l_m = 0.5 * (out - target).pow(2).mean() / scale
        z = F.relu(block.bn2(out) + shortcut)
        z = _run_blocks(rest, z)
        l_s = F.cross_entropy(head(z), ys)
        return l_m + o.discrimination_weight * l_s, l_m, l_s

    return conv, loss_at


def _reoptimise(w, keep, start, loss_at, ones, o: DCPOptions):
    """`o.inner_steps` Adam steps (scale-free: the joint loss's gradients vary by stage) on the
    selected weights (`keep`: 1 where selected) from `w`, whose loss is `start`; returns the best
    point seen and its loss, so the loss never rises with an addition. Steps that find nothing
    lower (they overshoot) are retried with a learning rate 4x smaller, up to `o.inner_retries`
    times: a stalled re-optimisation would otherwise read as convergence to the stopping rule."""
    lr = o.inner_lr
    for _ in range(1 + (o.inner_retries if o.inner_steps else 0)):
        loss, wv = _adam_steps(w, keep, start, loss_at, ones, o.inner_steps, lr)
        if loss < start:
            return loss, wv
        lr /= 4
    return start, w * keep


def _adam_steps(w, keep, start, loss_at, ones, steps: int, lr: float):
    wv = w.clone().requires_grad_(True)
    opt = torch.optim.Adam([wv], lr=lr)
    best = (start, wv.detach().clone())
    for _ in range(steps):
        loss = loss_at(wv, ones)[0]
        if loss.item() < best[0]:
            best = (loss.item(), wv.detach().clone())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        wv.grad.mul_(keep)
        opt.step()
    with torch.no_grad():
        last = float(loss_at(wv, ones)[0])
    if last < best[0]:
        best = (last, wv.detach().clone())
    return best[0], best[1] * keep


def _select_channels(model, baseline, head, si, bj, xs, ys, o: DCPOptions, min_keep: int):
    """Greedy discrimination-aware selection of the channels entering block bj's second conv."""
    conv, loss_at = _layer_loss(model, baseline, head, si, bj, xs, ys, o)
    n = conv.in_channels
    cap = max(min_keep, min(n, math.floor(o.max_keep * n + 1e-9)))
    w0 = conv.weight.detach().clone()
    mask = torch.zeros(n)
    ones = torch.ones(n)
    w = torch.zeros_like(w0)  # unselected channels carry zero weights
    curve = []
    with torch.no_grad():
        l0 = float(loss_at(w, ones)[0])
    curve.append(l0)
    prev, stopped = l0, "max_keep"
    while int(mask.sum()) < cap:
        # the gradient of the joint loss with respect to every channel's weights (zero for the
        # unselected, whose features still flow in): DCP ranks channels by its norm
        wv = w.clone().requires_grad_(True)
        g, = torch.autograd.grad(loss_at(wv, ones)[0], wv)
        score = g.pow(2).sum((0, 2, 3)).sqrt()
        score[mask.bool()] = -1.0
        j = int(score.argmax())
        mask[j] = 1.0
        # the new channel starts from its pre-trained weights scaled by the best of a few
        # factors (0 keeps the loss where it was, so an addition never starts worse)
        with torch.no_grad():
            trials = []
            for beta in (0.0, 0.5, 1.0):
                w[:, j] = beta * w0[:, j]
                trials.append((float(loss_at(w, ones)[0]), beta))
            w[:, j] = min(trials)[1] * w0[:, j]
        # re-optimise the selected channels' weights on the joint loss
        cur, w = _reoptimise(w, mask.view(1, -1, 1, 1), min(trials)[0], loss_at, ones, o)
        curve.append(cur)
        if int(mask.sum()) >= min_keep and abs(prev - cur) / max(l0, 1e-12) <= o.epsilon:
            stopped = "epsilon"
            break
        prev = cur
    with torch.no_grad():
        conv.weight.copy_(w * mask.view(1, -1, 1, 1))
    info = {"channels": n, "kept": int(mask.sum()), "stopped": stopped, "loss": [round(v, 5) for v in curve],
            "kept_channels": [int(i) for i in torch.nonzero(mask).flatten().tolist()]}
    return mask, info


def _select_kernels(model, baseline, head, si, bj, xs, ys, o: DCPOptions, min_keep: int):
    """DKP: greedy discrimination-aware selection of the single kernels W[o, i] of block bj's
    second conv, `kernel_batch` of them per step. Returns the (cout, cin) kernel mask; at least
    `min_keep` input channels keep a kernel (the genome's mask needs them)."""
    conv, loss_at = _layer_loss(model, baseline, head, si, bj, xs, ys, o)
    cout, n = conv.out_channels, conv.in_channels
    total = cout * n
    cap = max(min_keep, min(total, math.floor(o.max_keep * total + 1e-9)))
    batch = max(1, round(o.kernel_batch * total))
    w0 = conv.weight.detach().clone()
    kmask = torch.zeros(cout, n)
    ones = torch.ones(n)  # every input channel's features flow in; unselected kernels are zero
    w = torch.zeros_like(w0)
    curve = []
    with torch.no_grad():
        l0 = float(loss_at(w, ones)[0])
    curve.append(l0)
    prev, stopped = l0, "max_keep"
    while True:
        selected, channels = int(kmask.sum()), int((kmask.sum(0) > 0).sum())
        if selected >= total or (selected >= cap and channels >= min_keep):
            break
        wv = w.clone().requires_grad_(True)
        g, = torch.autograd.grad(loss_at(wv, ones)[0], wv)
        score = g.pow(2).sum((2, 3)).sqrt()  # (cout, cin): each kernel's gradient norm
        score[kmask.bool()] = -1.0
        new = torch.zeros(cout, n)
        if selected < cap:
            new.view(-1)[score.flatten().topk(min(batch, cap - selected)).indices] = 1.0
        else:  # at the cap with too few input channels: the best kernel of the best untouched ones
            untouched = kmask.sum(0) == 0
            best_o = score.argmax(0)
            col = torch.where(untouched, score.max(0).values, torch.full((n,), -2.0))
            for i in col.topk(min_keep - channels).indices.tolist():
                new[best_o[i], i] = 1.0
        kmask += new
        add = new[:, :, None, None]
        # the new kernels start from their pre-trained weights scaled by the best of a few factors
        # (0 keeps the loss where it was, so an addition never starts worse)
        with torch.no_grad():
            trials = []
            for beta in (0.0, 0.5, 1.0):
                wb = w * (1 - add) + beta * w0 * add
                trials.append((float(loss_at(wb, ones)[0]), beta))
            w = w * (1 - add) + min(trials)[1] * w0 * add
        # re-optimise the selected kernels on the joint loss
        cur, w = _reoptimise(w, kmask[:, :, None, None], min(trials)[0], loss_at, ones, o)
        curve.append(cur)
        if int((kmask.sum(0) > 0).sum()) >= min_keep and abs(prev - cur) / max(l0, 1e-12) <= o.epsilon:
            stopped = "epsilon"
            break
        prev = cur
    with torch.no_grad():
        conv.weight.copy_(w * kmask[:, :, None, None])
    per_in = kmask.sum(0)
    info = {"granularity": "kernel", "kernels": total, "kept_kernels": int(kmask.sum()), "kernel_batch": batch,
            "steps": len(curve) - 1, "channels": n, "kept": int((per_in > 0).sum()), "stopped": stopped,
            "loss": [round(v, 5) for v in curve],
            "kept_channels": [int(i) for i in torch.nonzero(per_in).flatten().tolist()],
            # row o: which input channels' kernels W[o, i] output channel o keeps
            "kernel_mask": ["".join("1" if v else "0" for v in row) for row in kmask.bool().tolist()]}
    return kmask, info
