"""DCP: discrimination-aware channel pruning (Zhuang et al., NeurIPS 2018; the journal version's
adaptive stopping rule and its kernel pruning, DKP) on the `resnet` family: the training and the
layer surgery. The optimiser `search.optimizers.dcp` decides when it runs and what it asks for;
its docstring describes the method.

Everything here works on the family's modules (`conv`, `bn`, `stages`, blocks with `conv1`,
`bn1`, `conv2`, `bn2`, `shortcut`, and `classifier`)."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from evaluators.base import TrainedModel
from spaces.builder import kernel_sparse_cost

log = logging.getLogger(__name__)


@dataclass
class DCPSettings:
    """The method's settings (the optimiser's options; their meaning is documented there)."""

    epsilon: float = 0.01
    max_keep: float = 1.0
    discrimination_weight: float = 1.0
    stage_epochs: float = 1.0
    stage_lr: float = 0.01
    head_epochs: int = 10
    head_images: int = 2048
    select_images: int = 256
    inner_steps: int = 3
    inner_lr: float = 0.005
    inner_retries: int = 3
    batch_size: int = 128
    granularity: str = "channel"
    kernel_batch: float = 0.025


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


def prune(model: TrainedModel, settings: DCPSettings) -> tuple[dict, dict[str, Any]]:
    """Run DCP (or DKP) on the trained network and write the pruned weights into its supernet,
    so that candidates inherit them. Returns the genome and the report (dcp.json)."""
    space, sup = model.space, model.supernet
    t0 = time.time()
    genome, pruned, report = discrimination_aware_pruning(
        space, sup, model.data, settings, model.seed
    )
    sup.load_state_dict(pruned.state_dict())
    sup.eval()
    report["time_s"] = round(time.time() - t0, 1)
    report["genome"] = space.to_json(genome)
    report["cost"] = space.cost(genome)
    report["full_cost"] = space.cost(space.full())
    if settings.granularity == "kernel":  # the pruned kernels' weights and FLOPs not counted
        report["sparse_cost"] = kernel_sparse_cost(space, genome, space.build(genome, sup))
    return genome, report


def discrimination_aware_pruning(
    space, supernet: nn.Module, data, o: DCPSettings, seed: int, device: str = "cpu"
):
    """Returns (genome, pruned full-shape model with unselected channels zeroed, report); the
    work runs on `device`."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    full = space.full()
    baseline = space.build(full, supernet).to(device).eval()
    for p in baseline.parameters():
        p.requires_grad_(False)
    model = space.build(full, supernet).to(device)
    xs, ys = data.train.take(o.select_images, seed)
    run = _Pruning(space, model, baseline, data, o, gen, xs.to(device), ys.to(device))
    for si in range(len(model.stages)):
        run.stage(si)
    model.eval()
    report = run.report
    if o.granularity == "kernel":
        report["kernels"] = sum(v["kernels"] for v in report["layers"].values())
        report["kept_kernels"] = sum(v["kept_kernels"] for v in report["layers"].values())
    return space.validate(run.genome), model, report


class _Pruning:
    """The state of one DCP pass: the genome so far and each pruned group's mask."""

    def __init__(self, space, model, baseline, data, o: DCPSettings, gen, xs, ys):
        self.space, self.model, self.baseline, self.data, self.o, self.gen = (
            space,
            model,
            baseline,
            data,
            o,
            gen,
        )
        self.xs, self.ys = xs, ys
        self.genome = dict(space.full())
        self.masks: dict[
            str, torch.Tensor
        ] = {}  # group -> kept input channels (or kernels) of conv2
        self.report: dict[str, Any] = {"epsilon": o.epsilon, "layers": {}}
        if o.granularity == "kernel":
            self.report.update(granularity="kernel", kernel_batch=o.kernel_batch)

    def enforce(self) -> None:
        """Zero the unselected weights of every pruned conv (after each training step)."""
        with torch.no_grad():
            for si, stage in enumerate(self.model.stages):
                for bj, block in enumerate(stage):
                    m = self.masks.get(f"s{si + 1}.b{bj}")
                    if m is not None:
                        block.conv2.weight.mul_(
                            m.view(1, -1, 1, 1) if m.dim() == 1 else m[:, :, None, None]
                        )

    def stage(self, si: int) -> None:
        """Train the stage's discrimination-aware head, fine-tune, then select block by block."""
        model, o = self.model, self.o
        stage = model.stages[si]
        head = StageHead(stage[-1].conv2.out_channels, int(self.data.num_classes)).to(
            self.xs.device
        )
        # the discrimination-aware classifier first learns on the stage's current features (an
        # untrained head's gradients would pick channels at random), then the network and the
        # head are fine-tuned with the final and this stage's loss
        _train_head(model, head, si, self.data, o, self.gen)
        if o.stage_epochs > 0:
            _stage_finetune(model, head, si, self.data, o, self.gen, self.enforce)
        model.eval()
        head.eval()
        for p in list(model.parameters()) + list(head.parameters()):
            p.requires_grad_(False)  # only the conv being pruned is optimised below
        for bj in range(len(stage)):
            self.block(si, bj, head)
        for p in model.parameters():
            p.requires_grad_(True)

    def block(self, si: int, bj: int, head) -> None:
        group = f"s{si + 1}.b{bj}"
        dim = f"mask.{group}"
        if dim not in self.space.dims:
            return
        t0 = time.time()
        args = (
            self.model,
            self.baseline,
            head,
            si,
            bj,
            self.xs,
            self.ys,
            self.o,
            self.space.dims[dim].min_keep,
        )
        if self.o.granularity == "kernel":
            kmask, info = _select_kernels(*args)
            self.model.stages[si][
                bj
            ].conv2.kernel_mask = kmask  # applied in forward: training keeps zeros
            self.masks[group] = kmask
            keep = (kmask.sum(0) > 0).float()
        else:
            keep, info = _select_channels(*args)
            self.masks[group] = keep
        self.enforce()
        self.genome[dim] = tuple(int(v) for v in keep.tolist())
        info["time_s"] = round(time.time() - t0, 2)
        self.report["layers"][group] = info
        kernels = (
            f"{info['kept_kernels']} of {info['kernels']} kernels, "
            if "kept_kernels" in info
            else ""
        )
        log.info(
            "dcp: %s keeps %s%d of %d channels (%s, %.1f s)",
            group,
            kernels,
            info["kept"],
            info["channels"],
            info["stopped"],
            info["time_s"],
        )


def _train_head(model, head, si, data, o: DCPSettings, gen) -> None:
    device = next(model.parameters()).device
    x, t = data.train.take(o.head_images, seed=int(torch.randint(2**31, (1,), generator=gen)))
    model.eval()
    feats = []
    with torch.no_grad():
        for i in range(0, len(x), 256):
            h = _stem(model, x[i : i + 256].to(device))
            for sj in range(si + 1):
                h = _run_blocks(model.stages[sj], h)
            feats.append(h)
    f, t = torch.cat(feats), t.to(device)
    opt = torch.optim.Adam(head.parameters(), lr=0.01)
    head.train()
    for _ in range(o.head_epochs):
        perm = torch.randperm(len(f), generator=gen).to(device)
        for i in range(0, len(f), 128):
            b = perm[i : i + 128]
            loss = F.cross_entropy(head(f[b]), t[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def _stage_batches(data, o: DCPSettings, gen, steps: int, device):
    """`steps` training batches (epochs of the split in a seeded order), on `device`."""
    step = 0
    while step < steps:
        for xb, yb in data.train.batches(o.batch_size, shuffle=True, gen=gen, drop_last=True):
            if step >= steps:
                return
            yield xb.to(device), yb.to(device)
            step += 1


def _stage_finetune(model, head, si, data, o: DCPSettings, gen, enforce) -> None:
    device = next(model.parameters()).device
    steps = max(1, math.ceil(o.stage_epochs * len(data.train) / o.batch_size))
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=o.stage_lr, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    head.train()
    for xb, yb in _stage_batches(data, o, gen, steps, device):
        h = _stem(model, xb)
        for sj, stage in enumerate(model.stages):
            h = _run_blocks(stage, h)
            if sj == si:
                stage_logits = head(h)
        loss = F.cross_entropy(model.classifier(h.mean((2, 3))), yb) + F.cross_entropy(
            stage_logits, yb
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        enforce()


def _layer_loss(model, baseline, head, si, bj, xs, ys, o: DCPSettings):
    """The joint loss L = L_M + lambda * L_S of block bj's second conv as a function of its weight
    (and of a mask over its input channels), and the conv."""
    block = model.stages[si][bj]
    rest = list(model.stages[si])[bj + 1 :]
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


def _reoptimise(w, keep, start, loss_at, ones, o: DCPSettings):
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


def _select_channels(model, baseline, head, si, bj, xs, ys, o: DCPSettings, min_keep: int):
    """Greedy discrimination-aware selection of the channels entering block bj's second conv."""
    conv, loss_at = _layer_loss(model, baseline, head, si, bj, xs, ys, o)
    n = conv.in_channels
    cap = max(min_keep, min(n, math.floor(o.max_keep * n + 1e-9)))
    w0 = conv.weight.detach().clone()
    mask = torch.zeros(n, device=w0.device)
    ones = torch.ones(n, device=w0.device)
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
        (g,) = torch.autograd.grad(loss_at(wv, ones)[0], wv)
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
    info = {
        "channels": n,
        "kept": int(mask.sum()),
        "stopped": stopped,
        "loss": [round(v, 5) for v in curve],
        "kept_channels": [int(i) for i in torch.nonzero(mask).flatten().tolist()],
    }
    return mask, info


def _select_kernels(model, baseline, head, si, bj, xs, ys, o: DCPSettings, min_keep: int):
    """DKP: greedy discrimination-aware selection of the single kernels W[o, i] of block bj's
    second conv, `kernel_batch` of them per step. Returns the (cout, cin) kernel mask; at least
    `min_keep` input channels keep a kernel (the genome's mask needs them)."""
    conv, loss_at = _layer_loss(model, baseline, head, si, bj, xs, ys, o)
    cout, n = conv.out_channels, conv.in_channels
    total = cout * n
    cap = max(min_keep, min(total, math.floor(o.max_keep * total + 1e-9)))
    batch = max(1, round(o.kernel_batch * total))
    w0 = conv.weight.detach().clone()
    kmask = torch.zeros(cout, n, device=w0.device)
    ones = torch.ones(
        n, device=w0.device
    )  # every input channel's features flow; unselected kernels are 0
    w = torch.zeros_like(w0)
    with torch.no_grad():
        l0 = float(loss_at(w, ones)[0])
    curve = [l0]
    prev, stopped = l0, "max_keep"
    while True:
        selected, channels = int(kmask.sum()), int((kmask.sum(0) > 0).sum())
        if selected >= total or (selected >= cap and channels >= min_keep):
            break
        wv = w.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(loss_at(wv, ones)[0], wv)
        score = g.pow(2).sum((2, 3)).sqrt()  # (cout, cin): each kernel's gradient norm
        new = _next_kernels(score, kmask, selected, cap, batch, channels, min_keep)
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
        if (
            int((kmask.sum(0) > 0).sum()) >= min_keep
            and abs(prev - cur) / max(l0, 1e-12) <= o.epsilon
        ):
            stopped = "epsilon"
            break
        prev = cur
    with torch.no_grad():
        conv.weight.copy_(w * kmask[:, :, None, None])
    return kmask, _kernel_info(kmask, total, batch, curve, stopped)


def _next_kernels(score, kmask, selected: int, cap: int, batch: int, channels: int, min_keep: int):
    """The kernels one greedy step adds: the top `batch` by gradient norm while under the cap; at
    the cap with too few input channels, the best kernel of each of the best untouched ones."""
    cout, n = kmask.shape
    score = score.clone()
    score[kmask.bool()] = -1.0
    new = torch.zeros(cout, n, device=kmask.device)
    if selected < cap:
        new.view(-1)[score.flatten().topk(min(batch, cap - selected)).indices] = 1.0
    else:
        untouched = kmask.sum(0) == 0
        best_o = score.argmax(0)
        col = torch.where(
            untouched, score.max(0).values, torch.full((n,), -2.0, device=kmask.device)
        )
        for i in col.topk(min_keep - channels).indices.tolist():
            new[best_o[i], i] = 1.0
    return new


def _kernel_info(kmask, total: int, batch: int, curve: list[float], stopped: str) -> dict[str, Any]:
    per_in = kmask.sum(0)
    return {
        "granularity": "kernel",
        "kernels": total,
        "kept_kernels": int(kmask.sum()),
        "kernel_batch": batch,
        "steps": len(curve) - 1,
        "channels": kmask.shape[1],
        "kept": int((per_in > 0).sum()),
        "stopped": stopped,
        "loss": [round(v, 5) for v in curve],
        "kept_channels": [int(i) for i in torch.nonzero(per_in).flatten().tolist()],
        # row o: which input channels' kernels W[o, i] output channel o keeps
        "kernel_mask": ["".join("1" if v else "0" for v in row) for row in kmask.bool().tolist()],
    }
