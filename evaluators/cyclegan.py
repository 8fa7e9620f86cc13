"""The co-evolution showcase: compressing the two generators of a CycleGAN (arXiv 1907.10804).

Domains, both built from scikit-learn's embedded digits and never paired: A, the digits as they
are (dark background, light ink); B, other digit images thickened (3x3 dilation) and inverted
(light background, dark ink). The full CycleGAN (both generators of the `cyclegan` family and
two PatchGAN discriminators) is pre-trained once with LSGAN and cycle-consistency losses and
cached. A genome prunes channels of both generators. As in the authors' search.py, each pruned
pair is first trained briefly before it is scored (theirs: epochs of the full CycleGAN losses,
identity loss included, the discriminators trained alongside; ours: `finetune_steps` steps drawn
by the trial's seed, LSGAN against the frozen pre-trained discriminators plus cycle consistency,
optionally L1 distillation to the full generators' outputs, on the training images). The score
is the paper's fitness, per generator the reciprocal of what the paper minimises:

    fitness_ab = 1 / (size_ab + gamma * (dis_ab + cycle_weight * cyc_a))

- size_ab: G_AB's parameters kept, as a fraction of the full G_AB's (the paper's count of the
  remaining parameters, normalised to the full generator);
- dis_ab: the discriminator-aware distance, mean || D_B(G_AB_pruned(a)) - D_B(G_AB(a)) ||^2;
- cyc_a: cycle consistency through the other population's generator,
  mean | G_BA_pruned(G_AB_pruned(a)) - a |.

Symmetrically for B -> A; `fitness` is their sum, `loss_ab` = dis_ab + cycle_weight * cyc_a.
The constants are ours, not the paper's: we do not know the gamma its experiments used (nor
whether it weights one loss against the other; cycle_weight 1 is the plain sum), and the
authors' released search.py scores differently (500 / (dis + 10 * cyc) plus 0.001 per pruned
channel). gamma 10 keeps the trade-off of this showcase's earlier fitness, -(dis + cyc + 0.1 x
kept fraction). Each domain's held-out images are split in two:
the fitness and every plain metric use the `select` part (what the search ranks by); the same
metrics with the suffix `_report` use the disjoint `report` part (what results are quoted on).
Batch-norm statistics of the pruned generators are recalibrated on their own training domain
before scoring."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from evaluators.base import EvalResult, Evaluator, detached_copy, latency_provider
from spaces.errors import ConfigError
from spaces.space import Genome, Space

log = logging.getLogger(__name__)


SPLITS = ("select", "report")


@dataclass
class Domains:
    a_train: torch.Tensor
    b_train: torch.Tensor
    a_val: torch.Tensor
    b_val: torch.Tensor
    select_fraction: float = 0.5

    def held_out(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Held-out images (A, B) of `split`: `select` (the first `select_fraction` of each
        domain's, what the search ranks by) or `report` (the rest, what results are quoted on)."""
        na = round(len(self.a_val) * self.select_fraction)
        nb = round(len(self.b_val) * self.select_fraction)
        if split == "select":
            return self.a_val[:na], self.b_val[:nb]
        if split == "report":
            return self.a_val[na:], self.b_val[nb:]
        raise ValueError(f"split {split!r} is not one of {SPLITS}")


def digit_domains(
    resolution: int, seed: int, val_fraction: float = 0.2, select_fraction: float = 0.5
) -> Domains:
    """Unpaired domains A (digits) and B (thickened, inverted digits of other images), in
    [-1, 1]."""
    from sklearn.datasets import load_digits

    x = (
        torch.tensor(load_digits().images, dtype=torch.float32).unsqueeze(1) / 16.0
    )  # (N, 1, 8, 8), ink = 1
    x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False).clamp(
        0, 1
    )
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x), generator=g)
    half = len(x) // 2
    a, b = x[perm[:half]], x[perm[half : 2 * half]]  # different images: unpaired
    b = 1.0 - F.max_pool2d(b, 3, 1, 1)  # thicker strokes, inverted
    a, b = (a * 2 - 1).repeat(1, 3, 1, 1), (b * 2 - 1).repeat(1, 3, 1, 1)
    nv = int(len(a) * val_fraction)
    return Domains(a[nv:], b[nv:], a[:nv], b[:nv], select_fraction)


class PatchDiscriminator(nn.Module):
    """A small PatchGAN: a map of real/fake scores."""

    def __init__(self, ch: int = 16):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, ch, 4, 2, 1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ch, 2 * ch, 4, 2, 1),
            nn.BatchNorm2d(2 * ch),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(2 * ch, 1, 3, 1, 1),
        )

    def forward(self, x):
        return self.net(x)


def _lsgan(scores: torch.Tensor, target: float) -> torch.Tensor:
    """LSGAN's loss: the scores' mean squared distance to 1 (real) or 0 (fake)."""
    return F.mse_loss(scores, torch.full_like(scores, float(target)))


def pretrain_cyclegan(
    space: Space,
    dom: Domains,
    steps: int,
    batch_size: int,
    lr: float,
    cycle_lambda: float,
    seed: int,
    progress=None,
) -> tuple[dict, dict]:
    """Train the full CycleGAN; returns the state ({generators, d_a, d_b}) and an info dict."""
    torch.manual_seed(seed)
    gen = space.supernet(seed)
    d_a, d_b = PatchDiscriminator(), PatchDiscriminator()
    opt_g = torch.optim.Adam(gen.parameters(), lr=lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(
        list(d_a.parameters()) + list(d_b.parameters()), lr=lr, betas=(0.5, 0.999)
    )
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    for step in range(steps):
        ia = torch.randint(len(dom.a_train), (batch_size,), generator=g)
        ib = torch.randint(len(dom.b_train), (batch_size,), generator=g)
        a, b = dom.a_train[ia], dom.b_train[ib]
        fake_b, fake_a = gen.ab(a), gen.ba(b)
        pb, pa = d_b(fake_b), d_a(fake_a)
        cycle = F.l1_loss(gen.ba(fake_b), a) + F.l1_loss(gen.ab(fake_a), b)
        loss_g = _lsgan(pb, 1) + _lsgan(pa, 1) + cycle_lambda * cycle
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        loss_d = 0.5 * (
            _lsgan(d_a(a), 1)
            + _lsgan(d_a(fake_a.detach()), 0)
            + _lsgan(d_b(b), 1)
            + _lsgan(d_b(fake_b.detach()), 0)
        )
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        if progress:
            progress(step + 1, steps, loss_g.item())
    gen.eval()
    with torch.no_grad():
        cyc = float(F.l1_loss(gen.ba(gen.ab(dom.a_val)), dom.a_val))
        shift = float((gen.ab(dom.a_val).mean() - dom.b_val.mean()).abs())
    secs = round(time.time() - t0, 2)
    info = {
        "steps": steps,
        "train_time_s": secs,
        "val_cycle_l1_a": cyc,
        "val_mean_gap_ab": shift,
        "gen_loss": float(loss_g.detach()),
        "disc_loss": float(loss_d.detach()),
    }
    log.info("CycleGAN pre-trained: %d steps in %.1f s, val cycle L1 (A) %.3f", steps, secs, cyc)
    state = {"generators": gen.state_dict(), "d_a": d_a.state_dict(), "d_b": d_b.state_dict()}
    return state, info


@torch.no_grad()
def recalibrate_generators(model: nn.Module, dom: Domains, batches: int = 4, bs: int = 128) -> None:
    """Batch-norm statistics of each generator on its own input domain."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for i in range(batches):
        model.ab(dom.a_train[i * bs : (i + 1) * bs])
        model.ba(dom.b_train[i * bs : (i + 1) * bs])
    for m, mo in zip(bns, saved):
        m.momentum = mo
    model.eval()


def finetune_pair(
    model: nn.Module,
    dom: Domains,
    d_a: nn.Module,
    d_b: nn.Module,
    steps: int,
    batch_size: int,
    lr: float,
    cycle_lambda: float,
    seed: int,
    full: nn.Module | None = None,
    distill: float = 0.0,
) -> list[float]:
    """Train a pruned pair briefly before it is scored, as the authors' search.py does: LSGAN
    against the (frozen) pre-trained discriminators plus cycle consistency, and `distill` x the
    L1 distance to the `full` generators' outputs, on batches of the training images drawn by
    `seed`. Returns the loss of each step."""
    if steps <= 0:
        return []
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.5, 0.999))
    model.train()
    losses = []
    with torch.enable_grad():
        for _ in range(steps):
            ia = torch.randint(len(dom.a_train), (batch_size,), generator=g)
            ib = torch.randint(len(dom.b_train), (batch_size,), generator=g)
            a, b = dom.a_train[ia], dom.b_train[ib]
            fake_b, fake_a = model.ab(a), model.ba(b)
            cycle = F.l1_loss(model.ba(fake_b), a) + F.l1_loss(model.ab(fake_a), b)
            loss = _lsgan(d_b(fake_b), 1) + _lsgan(d_a(fake_a), 1) + cycle_lambda * cycle
            if distill and full is not None:
                with torch.no_grad():
                    target_b, target_a = full.ab(a), full.ba(b)
                loss = loss + distill * (F.l1_loss(fake_b, target_b) + F.l1_loss(fake_a, target_a))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    model.eval()
    return losses


class CycleGANEvaluator(Evaluator):
    """Fine-tunes pruned generator pairs briefly and scores them by the co-evolutionary
    compression fitness: on the select images (the plain metrics) and on the report images
    (`*_report`)."""

    kind = "cyclegan"
    SCORED = (  # measured on each split of held-out images
        "fitness",
        "fitness_ab",
        "fitness_ba",
        "loss_ab",
        "loss_ba",
        "dis_ab",
        "dis_ba",
        "cyc_a",
        "cyc_b",
        "l1_to_full_ab",
        "l1_to_full_ba",
    )
    METRICS = (
        *SCORED,
        *(f"{m}_report" for m in SCORED),
        "size_ab",
        "size_ba",
        "kept_ab",
        "kept_ba",
        "finetune_loss_first",
        "finetune_loss_last",
        "flops",
        "params",
        "latency_ms",
        "latency_spread_ms",
        "wall_time_s",
    )

    def __init__(
        self,
        space: Space,
        cfg,
        seed: int,
        cache_dir: Path,
        latency=None,
        config_file: str | None = None,
    ):
        if space.family.kind != "cyclegan":
            raise ConfigError(
                config_file,
                "evaluator.kind",
                f"the cyclegan evaluator needs a cyclegan space, {space.name!r} is "
                f"{space.family.kind}",
            )
        self.space = self.base_space = space
        self.cfg, self.seed, self.cache_dir, self.latency = cfg, seed, Path(cache_dir), latency
        self.dom: Domains | None = None
        self.supernet = None
        self.supernet_info: dict = {}
        self.ref: dict[str, dict[str, torch.Tensor]] | None = None

    @classmethod
    def from_config(cls, cfg, space: Space, file: str | None) -> CycleGANEvaluator:
        return cls(
            space,
            cfg.evaluator.cyclegan,
            cfg.seed,
            cfg.cache_dir(),
            latency_provider(cfg, file),
            file,
        )

    @property
    def metrics(self) -> tuple[str, ...]:
        if self.latency is None:
            return tuple(m for m in self.METRICS if not m.startswith("latency_"))
        return self.METRICS

    def _key(self) -> dict:
        c = self.cfg
        return {
            "space": self.space.name,
            "family": self.space.family.spec.model_dump(),
            "data": "digits-ab",
            "steps": c.pretrain_steps,
            "batch_size": c.batch_size,
            "lr": c.lr,
            "cycle_lambda": c.cycle_lambda,
            "seed": self.seed,
            "format": 1,
        }

    def setup(self, progress=None, supernet_state: dict | None = None) -> None:
        if self.supernet is not None:
            return
        self.dom = digit_domains(
            self.space.family.spec.resolution, self.seed, select_fraction=self.cfg.select_fraction
        )
        if supernet_state is None:
            supernet_state = self._cached_or_trained(progress)
        self.supernet = self.space.supernet(self.seed)
        self.supernet.load_state_dict(supernet_state["generators"])
        self.supernet.eval()
        self.d_a, self.d_b = PatchDiscriminator(), PatchDiscriminator()
        self.d_a.load_state_dict(supernet_state["d_a"])
        self.d_b.load_state_dict(supernet_state["d_b"])
        for d in (self.d_a, self.d_b):  # the fitness's judges: never trained by fine-tuning
            d.eval()
            d.requires_grad_(False)
        self._state = supernet_state
        self.ref = {}
        with torch.no_grad():
            for split in SPLITS:
                a, b = self.dom.held_out(split)
                full_ab, full_ba = self.supernet.ab(a), self.supernet.ba(b)
                self.ref[split] = {
                    "a": a,
                    "b": b,
                    "full_ab": full_ab,
                    "full_ba": full_ba,
                    "d_full_ab": self.d_b(full_ab),
                    "d_full_ba": self.d_a(full_ba),
                }
        self.full_sizes = {d: self._channels(self.space.full(), d) for d in ("ab", "ba")}
        self.full_params = {d: _params(getattr(self.supernet, d)) for d in ("ab", "ba")}
        self.full_id = self.space.genome_id(self.space.full())

    def _cached_or_trained(self, progress) -> dict:
        key = self._key()
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
        folder = self.cache_dir / "supernets" / f"{self.space.name}-{digest}"
        weights, manifest = folder / "supernet.pt", folder / "manifest.json"
        if weights.exists() and manifest.exists():
            self.supernet_info = json.loads(manifest.read_text())
            log.info("CycleGAN from cache %s", folder)
            return torch.load(weights, weights_only=True)
        c = self.cfg
        log.info(
            "pre-training the full CycleGAN of %s (%d steps)", self.space.name, c.pretrain_steps
        )
        state, info = pretrain_cyclegan(
            self.space,
            self.dom,
            c.pretrain_steps,
            c.batch_size,
            c.lr,
            c.cycle_lambda,
            self.seed,
            progress,
        )
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / "supernet.pt.tmp"
        torch.save(state, tmp)
        os.replace(tmp, weights)
        self.supernet_info = {
            **info,
            "key": key,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "path": str(weights),
        }
        manifest.write_text(json.dumps(self.supernet_info, indent=2))
        return state

    def supernet_state(self) -> dict:
        self.setup()
        return self._state

    def detached(self):
        return detached_copy(self, ("dom", "supernet", "_state", "d_a", "d_b", "ref"))

    def summarize(self, run_dir, genome: Genome) -> None:
        """Full against pruned generators for the run's best candidate; see `summarize_best`."""
        summarize_best(self, Path(run_dir), genome)

    def _channels(self, genome: Genome, direction: str) -> int:
        sizes = self.space.arch(genome).sizes
        return sum(v for k, v in sizes.items() if k.startswith(direction + "."))

    def candidate(self, genome: Genome, seed: int) -> tuple[nn.Module, list[float]]:
        """The genome's pruned pair with inherited weights, fine-tuned (`finetune_steps`, drawn
        by `seed`) and batch-norm recalibrated, in eval mode; and the fine-tuning's losses. The
        full pair, nothing pruned, is the reference: the pre-trained generators as they are."""
        self.setup()
        c = self.cfg
        model = self.space.build(genome, self.supernet)
        if self.space.genome_id(genome) == self.full_id:
            return model.eval(), []
        losses: list[float] = []
        if c.finetune_steps:
            losses = finetune_pair(
                model,
                self.dom,
                self.d_a,
                self.d_b,
                c.finetune_steps,
                c.finetune_batch_size,
                c.finetune_lr,
                c.cycle_lambda,
                seed,
                self.supernet,
                c.distill,
            )
        recalibrate_generators(model, self.dom)
        return model, losses

    @torch.no_grad()
    def score(self, model: nn.Module, split: str, sizes: dict[str, float]) -> dict[str, float]:
        """The fitness and its terms for a pair on the `split` images (`sizes`: each generator's
        kept fraction of parameters)."""
        r, c = self.ref[split], self.cfg
        fake_b, fake_a = model.ab(r["a"]), model.ba(r["b"])
        m = {
            "dis_ab": float(((self.d_b(fake_b) - r["d_full_ab"]) ** 2).mean()),
            "dis_ba": float(((self.d_a(fake_a) - r["d_full_ba"]) ** 2).mean()),
            "cyc_a": float(F.l1_loss(model.ba(fake_b), r["a"])),
            "cyc_b": float(F.l1_loss(model.ab(fake_a), r["b"])),
            "l1_to_full_ab": float(F.l1_loss(fake_b, r["full_ab"])),
            "l1_to_full_ba": float(F.l1_loss(fake_a, r["full_ba"])),
        }
        for d, cyc in (("ab", "cyc_a"), ("ba", "cyc_b")):
            m[f"loss_{d}"] = m[f"dis_{d}"] + c.cycle_weight * m[cyc]
            m[f"fitness_{d}"] = 1.0 / (sizes[d] + c.gamma * m[f"loss_{d}"])
        m["fitness"] = m["fitness_ab"] + m["fitness_ba"]
        return m

    def evaluate(self, genome: Genome, seed: int = 0, report=None):
        self.setup()
        gid = self.space.genome_id(genome)
        t0 = time.time()
        try:
            model, losses = self.candidate(genome, seed)
            sizes = {d: _params(getattr(model, d)) / self.full_params[d] for d in ("ab", "ba")}
            m: dict[str, Any] = self.score(model, "select", sizes)
            m.update({f"{k}_report": v for k, v in self.score(model, "report", sizes).items()})
            m.update(
                {
                    "size_ab": sizes["ab"],
                    "size_ba": sizes["ba"],
                    "kept_ab": self._channels(genome, "ab") / self.full_sizes["ab"],
                    "kept_ba": self._channels(genome, "ba") / self.full_sizes["ba"],
                    **self.space.cost(genome),
                }
            )
            if losses:
                m["finetune_loss_first"], m["finetune_loss_last"] = losses[0], losses[-1]
            if not all(isinstance(v, (int, str)) or v == v for v in m.values()):
                raise FloatingPointError("NaN in the fitness terms")
            if self.latency is not None:
                with torch.no_grad():
                    m.update(self.latency.measure(model, self.space.family.spec.resolution))
            m["wall_time_s"] = time.time() - t0
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return EvalResult(gid, "complete", m, state_dict=state)
        except ConfigError:  # bad input (an image that does not decode): the run stops, exit 2
            raise
        except Exception as e:  # noqa: BLE001 - a candidate that raises is a failed trial
            log.warning("trial %s failed: %s", gid, e)
            log.debug("%s", traceback.format_exc())
            return EvalResult(
                gid, "failed", {"wall_time_s": time.time() - t0}, reason=f"{type(e).__name__}: {e}"
            )


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _generator_flops(gen: nn.Module, x: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        gen(x)
    return int(fc.get_total_flops())


@torch.no_grad()
def summarize_best(ev: CycleGANEvaluator, run_dir: Path, genome: Genome, n: int = 8) -> dict:
    """cyclegan.json (each generator's FLOPs and params, cycle and discriminator-aware losses,
    pruned against full) and cyclegan_samples.png (translations by the full and the pruned pair),
    on the report images. The pruned pair is the one the trial scored (trials/<id>.pt), else
    fine-tuned again with the run's seed."""
    ev.setup()
    full = ev.supernet
    gid = ev.space.genome_id(genome)
    weights = Path(run_dir) / "trials" / f"{gid}.pt"
    if weights.exists():
        pruned = ev.space.family.module(ev.space.arch(genome))
        pruned.load_state_dict(torch.load(weights, weights_only=True))
    else:
        pruned, _ = ev.candidate(genome, ev.seed)
    pruned.eval()
    a, b = ev.dom.held_out("report")
    out: dict[str, Any] = {"genome_id": gid, "images": "report", "n_a": len(a), "n_b": len(b)}
    for d, x, disc in (("ab", a, ev.d_b), ("ba", b, ev.d_a)):
        other = "ba" if d == "ab" else "ab"
        row = {}
        for name, model in (("full", full), ("pruned", pruned)):
            g, back = getattr(model, d), getattr(model, other)
            y = g(x)
            row[name] = {
                "flops": _generator_flops(g, x[:1]),
                "params": sum(p.numel() for p in g.parameters()),
                "cycle_l1": float(F.l1_loss(back(y), x)),
                "d_score": float(disc(y).mean()),
            }
        row["flops_reduction"] = row["full"]["flops"] / max(1, row["pruned"]["flops"])
        row["params_reduction"] = row["full"]["params"] / max(1, row["pruned"]["params"])
        row["l1_pruned_to_full"] = float(F.l1_loss(getattr(pruned, d)(x), getattr(full, d)(x)))
        out[d] = row
    (Path(run_dir) / "cyclegan.json").write_text(json.dumps(out, indent=2))
    _sample_figure(full, pruned, a, b, n, out, Path(run_dir) / "cyclegan_samples.png")
    return out


def _sample_figure(full, pruned, a, b, n: int, out: dict, path: Path) -> None:
    """cyclegan_samples.png: the first `n` images of each domain and their translations by the
    full and the pruned pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [
        ("A", a[:n]),
        ("full G_AB(A)", full.ab(a[:n])),
        ("pruned G_AB(A)", pruned.ab(a[:n])),
        ("B", b[:n]),
        ("full G_BA(B)", full.ba(b[:n])),
        ("pruned G_BA(B)", pruned.ba(b[:n])),
    ]
    fig, axes = plt.subplots(len(rows), n, figsize=(n * 1.1, len(rows) * 1.2))
    for i, (label, imgs) in enumerate(rows):
        for j in range(n):
            ax = axes[i][j]
            ax.imshow(imgs[j, 0].clamp(-1, 1).cpu().numpy(), cmap="gray", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(label, fontsize=7)
    fig.suptitle(
        f"G_AB {out['ab']['flops_reduction']:.1f}x, "
        f"G_BA {out['ba']['flops_reduction']:.1f}x fewer FLOPs; "
        f"cycle L1 A {out['ab']['full']['cycle_l1']:.3f} -> {out['ab']['pruned']['cycle_l1']:.3f}, "
        f"B {out['ba']['full']['cycle_l1']:.3f} -> {out['ba']['pruned']['cycle_l1']:.3f}",
        fontsize=8,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
