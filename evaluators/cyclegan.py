"""The co-evolution showcase: compressing the two generators of a CycleGAN (arXiv 1907.10804).

Domains, both built from scikit-learn's embedded digits and never paired: A, the digits as they
are (dark background, light ink); B, other digit images thickened (3x3 dilation) and inverted
(light background, dark ink). The full CycleGAN (both generators of the `cyclegan` family and
two PatchGAN discriminators) is pre-trained once with LSGAN and cycle-consistency losses and
cached. A genome prunes channels of both generators; its fitness is the paper's, per generator:

    fitness_ab = -(dis_ab + cycle_weight * cyc_a + channel_weight * kept_ab)

- dis_ab: the discriminator-aware distance, mean || D_B(G_AB_pruned(a)) - D_B(G_AB(a)) ||^2;
- cyc_a: cycle consistency through the other population's generator,
  mean | G_BA_pruned(G_AB_pruned(a)) - a |;
- kept_ab: the fraction of G_AB's channels kept (the paper's term for pruned channels).

Symmetrically for B -> A. `fitness` is their sum. Batch-norm statistics of the pruned
generators are recalibrated on their own domain before scoring."""

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


@dataclass
class Domains:
    a_train: torch.Tensor
    b_train: torch.Tensor
    a_val: torch.Tensor
    b_val: torch.Tensor


def digit_domains(resolution: int, seed: int, val_fraction: float = 0.2) -> Domains:
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
    return Domains(a[nv:], b[nv:], a[:nv], b[:nv])


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
        "gen_loss": float(loss_g),
        "disc_loss": float(loss_d),
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


class CycleGANEvaluator(Evaluator):
    """Scores pruned generator pairs by the co-evolutionary compression fitness."""

    kind = "cyclegan"
    METRICS = (
        "fitness",
        "fitness_ab",
        "fitness_ba",
        "dis_ab",
        "dis_ba",
        "cyc_a",
        "cyc_b",
        "kept_ab",
        "kept_ba",
        "l1_to_full_ab",
        "l1_to_full_ba",
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
        self.dom = digit_domains(self.space.family.spec.resolution, self.seed)
        if supernet_state is None:
            supernet_state = self._cached_or_trained(progress)
        self.supernet = self.space.supernet(self.seed)
        self.supernet.load_state_dict(supernet_state["generators"])
        self.supernet.eval()
        self.d_a, self.d_b = PatchDiscriminator(), PatchDiscriminator()
        self.d_a.load_state_dict(supernet_state["d_a"])
        self.d_b.load_state_dict(supernet_state["d_b"])
        self.d_a.eval()
        self.d_b.eval()
        self._state = supernet_state
        with torch.no_grad():
            self.full_ab, self.full_ba = (
                self.supernet.ab(self.dom.a_val),
                self.supernet.ba(self.dom.b_val),
            )
            self.d_full_ab, self.d_full_ba = self.d_b(self.full_ab), self.d_a(self.full_ba)
        self.full_sizes = {d: self._channels(self.space.full(), d) for d in ("ab", "ba")}

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
        return detached_copy(
            self,
            (
                "dom",
                "supernet",
                "_state",
                "d_a",
                "d_b",
                "full_ab",
                "full_ba",
                "d_full_ab",
                "d_full_ba",
            ),
        )

    def summarize(self, run_dir, genome: Genome) -> None:
        """Full against pruned generators for the run's best candidate; see `summarize_best`."""
        summarize_best(self, Path(run_dir), genome)

    def _channels(self, genome: Genome, direction: str) -> int:
        sizes = self.space.arch(genome).sizes
        return sum(v for k, v in sizes.items() if k.startswith(direction + "."))

    @torch.no_grad()
    def evaluate(self, genome: Genome, seed: int = 0, report=None):
        self.setup()
        gid = self.space.genome_id(genome)
        t0 = time.time()
        try:
            model = self.space.build(genome, self.supernet)
            recalibrate_generators(model, self.dom)
            a, b = self.dom.a_val, self.dom.b_val
            fake_b, fake_a = model.ab(a), model.ba(b)
            m: dict[str, Any] = {
                "dis_ab": float(((self.d_b(fake_b) - self.d_full_ab) ** 2).mean()),
                "dis_ba": float(((self.d_a(fake_a) - self.d_full_ba) ** 2).mean()),
                "cyc_a": float(F.l1_loss(model.ba(fake_b), a)),
                "cyc_b": float(F.l1_loss(model.ab(fake_a), b)),
                "kept_ab": self._channels(genome, "ab") / self.full_sizes["ab"],
                "kept_ba": self._channels(genome, "ba") / self.full_sizes["ba"],
                "l1_to_full_ab": float(F.l1_loss(fake_b, self.full_ab)),
                "l1_to_full_ba": float(F.l1_loss(fake_a, self.full_ba)),
                **self.space.cost(genome),
            }
            c = self.cfg
            m["fitness_ab"] = -(
                m["dis_ab"] + c.cycle_weight * m["cyc_a"] + c.channel_weight * m["kept_ab"]
            )
            m["fitness_ba"] = -(
                m["dis_ba"] + c.cycle_weight * m["cyc_b"] + c.channel_weight * m["kept_ba"]
            )
            m["fitness"] = m["fitness_ab"] + m["fitness_ba"]
            if not all(isinstance(v, (int, str)) or v == v for v in m.values()):
                raise FloatingPointError("NaN in the fitness terms")
            if self.latency is not None:
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


def _generator_flops(gen: nn.Module, x: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        gen(x)
    return int(fc.get_total_flops())


@torch.no_grad()
def summarize_best(ev: CycleGANEvaluator, run_dir: Path, genome: Genome, n: int = 8) -> dict:
    """cyclegan.json (each generator's FLOPs and params, cycle and discriminator-aware losses,
    pruned against full) and cyclegan_samples.png (translations by the full and the pruned pair)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ev.setup()
    full = ev.supernet
    pruned = ev.space.build(genome, ev.supernet)
    recalibrate_generators(pruned, ev.dom)
    pruned.eval()
    a, b = ev.dom.a_val, ev.dom.b_val
    out: dict[str, Any] = {"genome_id": ev.space.genome_id(genome)}
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
    fig.savefig(Path(run_dir) / "cyclegan_samples.png", dpi=110)
    plt.close(fig)
    return out
