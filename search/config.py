"""Run configuration: a space file plus run settings, validated into typed objects before any
work starts. Errors name the file, the field and the reason (exit code 2 in the CLI)."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from spaces.config import SPACE_KEYS, family_from_dict, read_yaml, space_of_family
from spaces.errors import ConfigError
from spaces.space import Space


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Objective(_M):
    metric: str
    direction: Literal["maximize", "minimize"] = "maximize"

    @property
    def sign(self) -> float:
        """+1 to maximise, -1 to minimise: the one place a direction becomes a number."""
        return 1.0 if self.direction == "maximize" else -1.0

    @property
    def mode(self) -> str:
        """Ray Tune's name for the direction."""
        return "max" if self.sign > 0 else "min"


def signs(objectives: list[Objective]) -> list[float]:
    """Each objective's sign (+1 maximise, -1 minimise)."""
    return [o.sign for o in objectives]


class Constraint(_M):
    metric: str
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _bound(self):
        if self.min is None and self.max is None:
            raise ValueError("a constraint needs `min` or `max`")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is greater than max {self.max}")
        return self

    def violation(self, value: float) -> float:
        """Optuna's convention: <= 0 is feasible."""
        v = float("-inf")
        if self.max is not None:
            v = max(v, value - self.max)
        if self.min is not None:
            v = max(v, self.min - value)
        return v


class DatasetCfg(_M):
    name: Literal["digits", "imagefolder", "cifar10"] = "digits"
    path: str | None = None
    per_class: int | None = Field(None, ge=1)
    test_per_class: int | None = Field(None, ge=1)
    val_fraction: float = Field(0.2, gt=0, lt=0.9)
    test_fraction: float = Field(0.2, ge=0, lt=0.9)
    augment: Literal["auto", "none", "crop-flip", "resized-crop-flip"] = Field(
        "auto", description="training augmentation; auto: crop-flip for images, none for digits"
    )
    workers: int = Field(0, ge=0, description="processes decoding images (0: the training one)")


class RecipeCfg(_M):
    epochs: float = Field(3.0, gt=0)
    steps: int | None = Field(None, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(0.02, gt=0)
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    weight_decay: float = Field(5e-5, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    weight_training: Literal["slb", "ste"] = Field(
        "slb", description="how low-bit weight sets train (int8: always ste)"
    )
    slb_t_start: float = Field(1.0, gt=0)
    slb_t_end: float = Field(100.0, gt=0)
    slb_lr: float = Field(
        0.05, gt=0, description="Adam's learning rate for SLB's logits and scales"
    )
    bn_batches: int = Field(
        20,
        ge=0,
        description="after low-bit weights become hard, batch-norm statistics are re-estimated "
        "on this many training batches (0: not)",
    )


class PretrainCfg(RecipeCfg):
    epochs: float = Field(10.0, gt=0)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(0.05, gt=0)
    sandwich: int = Field(
        4, ge=1, description="sub-networks per batch: full, smallest, random ones"
    )


class CycleGANCfg(_M):
    pretrain_steps: int = Field(
        1500, ge=1, description="steps of full-CycleGAN pre-training (cached)"
    )
    batch_size: int = Field(32, ge=1)
    lr: float = Field(2e-4, gt=0)
    cycle_lambda: float = Field(10.0, ge=0, description="cycle-consistency weight in pre-training")
    cycle_weight: float = Field(
        1.0, ge=0, description="weight of the cycle loss beside the discriminator-aware one"
    )
    gamma: float = Field(
        10.0,
        gt=0,
        description="the fitness's weight of the losses against the kept-parameter fraction: "
        "1 / (kept + gamma * (dis + cycle_weight * cyc))",
    )
    finetune_steps: int = Field(
        10, ge=0, description="steps each pruned pair is trained before scoring (0: inherited)"
    )
    finetune_lr: float = Field(1e-3, gt=0, description="Adam's learning rate when fine-tuning")
    finetune_batch_size: int = Field(16, ge=1)
    distill: float = Field(
        0.0, ge=0, description="fine-tuning: weight of the L1 distance to the full generators"
    )
    select_fraction: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="of each domain's held-out images, the share the search selects on; the "
        "rest only report",
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data):
        if isinstance(data, dict) and "channel_weight" in data:
            raise ValueError(
                "evaluator.cyclegan.channel_weight is gone: the fitness is now the paper's "
                "1 / (kept + gamma * (dis + cycle_weight * cyc)); gamma 10 matches "
                "channel_weight 0.1"
            )
        return data


class EvaluatorCfg(_M):
    kind: str = Field("train", description="an evaluator of evaluators.registry")
    finetune: RecipeCfg = RecipeCfg()
    cyclegan: CycleGANCfg = CycleGANCfg()
    table: str = "../shared/data/nb201_merged.csv"
    dataset: str = "cifar10"
    table_latency: str = Field("raspi4", description="the table's latency column: lat_<this>")

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data):
        if isinstance(data, dict) and "device" in data:
            raise ValueError(
                "evaluator.device is now evaluator.table_latency (the table's latency column, "
                "lat_<name>); the compute device is the run's `device:`"
            )
        return data

    @field_validator("kind")
    @classmethod
    def _known(cls, v: str) -> str:
        from evaluators.registry import EVALUATORS

        if v not in EVALUATORS:
            raise ValueError(f"unknown evaluator {v!r}; expected one of {', '.join(EVALUATORS)}")
        return v


class LatencyCfg(_M):
    provider: str = Field("torch", description="a provider of kernels.latency.PROVIDERS, or none")
    repeats: int = Field(20, ge=1, description="timed runs (median and interquartile spread)")
    warmup: int = Field(3, ge=0)
    threads: int | None = Field(
        None, ge=1, description="torch / onnxruntime threads; default theirs"
    )
    target: str | dict[str, Any] | None = Field(
        None, description="TVM target; default: llvm for this host's CPU"
    )
    trials_per_task: int = Field(
        32, ge=0, description="MetaSchedule trials per new kernel (0: no tuning)"
    )
    focus_trials: int = Field(
        0,
        ge=0,
        description="trials in all for the newly tuned kernels that make up focus_share of their "
        "summed tuned time (a second pass); 0: every kernel gets trials_per_task",
    )
    focus_share: float = Field(
        0.8, gt=0, le=1, description="the share of tuned time whose kernels get focus_trials"
    )
    focus_budget: int = Field(
        0,
        ge=0,
        description="the second pass's trials in all per tuning session: the kernels with the "
        "largest share of a network's time first (the front check of 3 networks then costs "
        "about what one of 2 does); 0: no bound",
    )
    light_trials: int | None = Field(
        None,
        ge=0,
        description="tvm-transfer's front check with check_transfer: trials for a new kernel "
        "outside transfer_share of the new kernels' time as their first transferred schedules "
        "measure (that schedule is among its candidates too); 0: none, that schedule stands; "
        "unset: trials_per_task like the rest",
    )
    strategy: Literal["replay-trace", "evolutionary"] = "replay-trace"
    database: str | None = Field(
        None, description="folder of the tuning databases (one per target); default <cache>/tvm"
    )
    fit_networks: int = Field(12, ge=1, description="tvm-model: networks measured to fit the model")
    holdout: int = Field(
        4, ge=0, description="tvm-model: networks measured to check it, never fitted on"
    )
    check_front: int = Field(
        8,
        ge=0,
        description="tvm-model, tvm-transfer: Pareto-front networks measured at the end with "
        "their own kernels tuned",
    )
    seed_networks: int = Field(
        3,
        ge=1,
        description="tvm-transfer: networks spread over the space (the full one first) whose "
        "kernels are tuned at the start; every other kernel gets the nearest one's schedule",
    )
    transfer_pick: Literal["nearest", "fastest"] = Field(
        "fastest",
        description="tvm-transfer: a kernel's schedule replayed from the nearest tuned kernel, or "
        "the fastest replay of the transfer_tries nearest (each compiled and timed alone)",
    )
    transfer_tries: int = Field(
        3, ge=1, description="tvm-transfer: tuned kernels a kernel's schedule may come from"
    )
    transfer_share: float = Field(
        1.0,
        gt=0,
        le=1,
        description="tvm-transfer, transfer_pick fastest: every new kernel's nearest replay is "
        "timed first; only a network's new kernels whose replay so timed makes up this share of "
        "their time get the other transfer_tries replays",
    )
    check_transfer: bool = Field(
        True,
        description="tvm-transfer: the front check also times each new kernel's transferred "
        "schedules (from the transfer_tries nearest tuned kernels) as candidates of its tuning",
    )
    rounds: int = Field(
        5,
        ge=1,
        description="tvm-model, tvm-transfer: interleaved timing rounds of the networks "
        "measured with tuned kernels (each one's latency: its quietest round's figure)",
    )

    @field_validator("provider")
    @classmethod
    def _known(cls, v: str) -> str:
        from kernels.latency import NONE, PROVIDERS

        if v != NONE and v not in PROVIDERS:
            raise ValueError(
                f"unknown latency provider {v!r}; expected one of {', '.join([*PROVIDERS, NONE])}"
            )
        return v


class RayCfg(_M):
    cpus_per_worker: float | None = Field(
        None, gt=0, description="default: the CPUs divided among the workers"
    )
    max_retries: int = Field(2, ge=0, description="retries of a trial whose worker process died")
    object_store_memory: int | None = Field(
        None, ge=78_643_200, description="bytes, embedded Ray only"
    )
    connect_timeout: float = Field(
        30.0, gt=0, description="seconds a cluster address may take to answer (--address)"
    )
    gpus_per_worker: float | None = Field(
        None,
        ge=0,
        description="GPUs each worker / Tune trial asks for (fractions allowed); "
        "default: the visible GPUs shared by the workers when training on CUDA, else 0",
    )


class TuneCfg(_M):
    scheduler: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(
        1, ge=1, description="epochs every candidate gets before ASHA may stop it"
    )
    reduction_factor: float = Field(3.0, gt=1)


class OptimizerCfg(_M):
    name: str = "random"
    options: dict[str, Any] = Field(default_factory=dict)


class RunCfg(_M):
    name: str
    description: str = ""
    family: dict[str, Any]
    dimensions: dict[str, Any] | None = None  # a user's network: generated when omitted
    groups: dict[str, Any] | None = None
    optimizer: OptimizerCfg = OptimizerCfg()
    budget: int = Field(20, ge=1)
    seed: int = Field(0, ge=0)
    workers: int | None = Field(
        None,
        ge=0,
        description="evaluator workers on Ray; 0: in-process; "
        "default: all cores (train), 0 (table)",
    )
    address: str | None = Field(
        None, description="a Ray cluster (HOST:PORT); default RAY_ADDRESS, else embedded local Ray"
    )
    runner: Literal["loop", "tune"] = "loop"
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N: where training runs")
    reference: bool = Field(
        True, description="evaluate the base network like a candidate once, for comparisons"
    )
    amp: bool = Field(True, description="bfloat16 mixed precision when training on CUDA")
    ray: RayCfg = RayCfg()
    tune: TuneCfg = TuneCfg()
    max_failures: int | None = Field(None, ge=0)
    objectives: list[Objective] = Field(
        default_factory=lambda: [Objective(metric="val_acc")], min_length=1
    )
    constraints: list[Constraint] = Field(default_factory=list)
    dataset: DatasetCfg = DatasetCfg()
    evaluator: EvaluatorCfg = EvaluatorCfg()
    pretrain: PretrainCfg = PretrainCfg()
    latency: LatencyCfg = LatencyCfg()
    cache: str | None = None
    storage: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthands(cls, data):
        if isinstance(data, dict) and isinstance(data.get("optimizer"), str):
            data = {**data, "optimizer": {"name": data["optimizer"]}}
        return data

    def cache_dir(self) -> Path:
        if self.cache:
            return Path(self.cache).expanduser()
        return Path(os.environ.get("ARCHSEARCH_CACHE", Path.home() / ".cache" / "archsearch"))


# a bare `--set key=value` on one of these sections sets its selector field
SELECTORS = {"optimizer": "name", "evaluator": "kind", "dataset": "name", "latency": "provider"}


def apply_overrides(data: dict[str, Any], sets: list[str]) -> dict[str, Any]:
    """Apply `--set key=value` (YAML values, dotted keys). A bare key that is not a run field is
    an option of the optimiser (`--set epsilon=0.01` -> optimizer.options.epsilon)."""
    data = copy.deepcopy(data)
    # `--set optimizer=NAME` first, wherever it stands: the options given beside it are NAME's
    sets = sorted(
        sets,
        key=lambda item: not item.replace(" ", "").startswith(("optimizer=", "optimizer.name=")),
    )
    for item in sets:
        if "=" not in item:
            raise ConfigError("--set", item, "expected key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        parts = key.split(".")
        if not key or any(not p for p in parts):
            raise ConfigError("--set", item, "empty key")
        if len(parts) == 1:
            if key in SELECTORS and not isinstance(value, dict):
                parts = [key, SELECTORS[key]]
            elif key not in RunCfg.model_fields and key != "preset":
                parts = ["optimizer", "options", key]
        if parts == ["optimizer", "name"]:  # another optimiser starts from its own defaults
            opt = data.get("optimizer")
            opt = {"name": opt} if isinstance(opt, str) else (opt if isinstance(opt, dict) else {})
            if opt.get("name", "random") != value:
                data["optimizer"] = {}
        cur = data
        for p in parts[:-1]:
            if p == "optimizer" and isinstance(cur.get(p), str):
                cur[p] = {"name": cur[p]}
            nxt = cur.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError("--set", key, f"{p!r} is not a section")
            cur = nxt
        cur[parts[-1]] = value
    return data


def _pydantic_error(file: str, e: ValidationError) -> ConfigError:
    first = e.errors()[0]
    loc = ".".join(str(x) for x in first["loc"]) or None
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "value_error":
        return ConfigError(file, loc, msg)
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif first["type"] == "missing":
        msg = "required"
    inp = first.get("input")
    if first["type"] not in ("missing", "extra_forbidden") and not isinstance(inp, (dict, list)):
        msg += f" (got {inp!r})"
    return ConfigError(file, loc, msg)


CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _listed(names: Any) -> list:
    return names if isinstance(names, list) else [names]


def apply_presets(data: dict[str, Any], file: str) -> dict[str, Any]:
    """`preset: NAME` (or a list) merges configs/NAME.yaml over the file's own settings (in
    order: a later preset over an earlier one)."""
    names = data.pop("preset", None)
    if names is None:
        return data
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(file, "preset", "expected a preset name or a list of names")
    merged: dict[str, Any] = {}
    for n in names:
        p = Path(n) if n.endswith((".yaml", ".yml")) else CONFIGS / f"{n}.yaml"
        if not p.exists():
            known = ", ".join(sorted(q.stem for q in CONFIGS.glob("*.yaml")))
            raise ConfigError(file, "preset", f"unknown preset {n!r}; known: {known}")
        merged = _merge(merged, read_yaml(p))
    return _merge(data, merged)


def load_run_config(
    path: str | Path, sets: list[str] | None = None, flags: dict[str, Any] | None = None, **objects
) -> tuple[RunCfg, Space, dict[str, Any]]:
    """Read, override and validate a run file; returns the config, its space and the resolved
    dict. `objects`: what Python hands the family over (a user's network: `model=`)."""
    return resolve_run_config(read_yaml(path), str(path), sets, flags, **objects)


def _apply_flags(data: dict[str, Any], flags: dict[str, Any]) -> None:
    """CLI flags into the mapping, before `--set` (its options go to the flag's optimiser)."""
    for k, v in flags.items():
        if v is None:
            continue
        if k == "optimizer":
            opt = data.get("optimizer")
            opt = {"name": opt} if isinstance(opt, str) else (opt if isinstance(opt, dict) else {})
            # the file's options belong to the file's optimiser: another starts from its defaults
            data["optimizer"] = (
                {**opt, "name": v} if opt.get("name", "random") == v else {"name": v}
            )
        else:
            data[k] = v


def resolve_run_config(
    data: dict[str, Any],
    file: str,
    sets: list[str] | None = None,
    flags: dict[str, Any] | None = None,
    **objects,
) -> tuple[RunCfg, Space, dict[str, Any]]:
    """`load_run_config` on a mapping (`file` names it in errors)."""
    data = copy.deepcopy(data)
    sets = list(sets or [])
    named = [x for x in sets if x.split("=", 1)[0].strip() == "preset"]
    if named:  # `--set preset=X` comes after the file's own presets (it overrides them)
        own = data.get("preset") or []
        data["preset"] = [own] if isinstance(own, str) else list(own)
        data["preset"] += _listed(apply_overrides({}, named).get("preset"))
    data = apply_presets(data, file)  # a preset overrides the file; flags and --set override both
    _apply_flags(data, flags or {})
    data = apply_overrides(data, [x for x in sets if x not in named])
    try:
        cfg = RunCfg.model_validate(data)
    except ValidationError as e:
        raise _pydantic_error(file, e) from None
    family = family_from_dict(data.get("family"), file, **objects)
    space = space_of_family({k: v for k, v in data.items() if k in SPACE_KEYS}, family, file)
    resolved = cfg.model_dump(mode="json", exclude_none=True)
    resolved["family"] = {**resolved["family"], **space.family.portable()}
    return cfg, space, resolved
