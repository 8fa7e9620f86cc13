"""The four dimension kinds of the unified space (DESIGN.md): Mask, Choice, Scale, WeightSet.

Each kind samples, mutates, crosses over, validates and converts itself, and encodes itself for
DEAP (a flat gene list), Optuna (suggest / params+distributions), gymnasium and Ray Tune, so
optimisers never special-case a kind.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from spaces.errors import ConfigError, GenomeError

# Weight sets by name: how many values a weight may take before its output channel's scale.
# Every set is the evenly spaced linspace(-1, 1, levels) (spaces.layers.set_levels): `intN` has
# 2**N levels, as SLB's authors' code has it (int2: {-1, -1/3, 1/3, 1}); ternary {-1, 0, 1};
# binary {-1, 1}.
WEIGHT_SETS: dict[str, int | None] = {
    "float": None,  # no quantisation
    "int8": 256,
    "int4": 16,
    "int2": 4,
    "ternary": 3,  # {-1, 0, +1}
    "binary": 2,  # {-1, +1}
}


@dataclass
class Condition:
    """A dimension is active only when a depth scale keeps block `index` of a stage of `blocks`."""

    depth_dim: str
    blocks: int
    index: int

    def holds(self, genome: dict[str, Any]) -> bool:
        return self.index < blocks_kept(float(genome[self.depth_dim]), self.blocks)

    def to_dict(self) -> dict[str, Any]:
        return {"depth_dim": self.depth_dim, "blocks": self.blocks, "index": self.index}


def blocks_kept(depth: float, blocks: int) -> int:
    """Blocks a stage keeps under a depth multiplier: the first ceil(d * n), at least one."""
    return max(1, min(blocks, math.ceil(depth * blocks - 1e-9)))


@dataclass
class YamlDim:
    """One dimension of a space file as it is being read: where it stands (for errors), its
    mapping, and what it was resolved to (name, target, layer scope, condition, family)."""

    file: str
    field: str
    spec: dict[str, Any]
    name: str
    target: str
    scope: str
    condition: Condition | None
    family: Any

    def err(self, key: str | None, reason: str) -> ConfigError:
        return ConfigError(self.file, f"{self.field}.{key}" if key else self.field, reason)

    def number(self, key: str, default: Any = None, integer: bool = False) -> Any:
        """The value of `key` (or `default`), which must be a number (an integer)."""
        v = self.spec.get(key, default)
        ok = isinstance(v, int) if integer else isinstance(v, (int, float))
        if isinstance(v, bool) or not ok:
            raise self.err(key, f"expected {'an integer' if integer else 'a number'}, got {v!r}")
        return v


@dataclass
class Dimension:
    """One named axis of the space. `target` says what it acts on; `scope` which layers.

    A new kind is a subclass with its `kind`, the keys its YAML takes (`yaml_keys`, beside
    kind, target and per), `from_yaml` and the value and encoding methods below, registered in
    `spaces.kinds`."""

    name: str
    target: str = ""
    scope: str = ""
    condition: Condition | None = None
    default: Any = None
    kind: ClassVar[str] = ""
    yaml_keys: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def from_yaml(cls, y: YamlDim) -> Dimension:
        """The dimension a space file's mapping `y.spec` describes; ConfigError naming the key."""
        raise NotImplementedError

    # --- values -----------------------------------------------------------------------------
    def sample(self, rng: random.Random) -> Any:
        raise NotImplementedError

    def mutate(self, value: Any, rng: random.Random, rate: float) -> Any:
        raise NotImplementedError

    def crossover(self, a: Any, b: Any, rng: random.Random) -> tuple[Any, Any]:
        raise NotImplementedError

    def validate(self, value: Any) -> Any:
        """Return the canonical value or raise GenomeError saying why it does not fit."""
        raise NotImplementedError

    def to_json(self, value: Any) -> Any:
        return value

    def from_json(self, obj: Any) -> Any:
        return self.validate(obj)

    # --- encodings --------------------------------------------------------------------------
    def n_genes(self) -> int:
        return 1

    def to_genes(self, value: Any) -> list:
        raise NotImplementedError

    def from_genes(self, genes: Sequence) -> Any:
        raise NotImplementedError

    def features(self, value: Any) -> list[float]:
        """Numbers a surrogate model regresses on, scaled so that two values add between 0 and
        1 to the squared distance of their genomes (default: the genes, for one gene in
        [0, 1])."""
        return [float(g) for g in self.to_genes(value)]

    def optuna_distributions(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_optuna(self, value: Any) -> dict[str, Any]:
        raise NotImplementedError

    def from_optuna(self, params: dict[str, Any]) -> Any:
        raise NotImplementedError

    def suggest(self, trial: Any) -> Any:
        raise NotImplementedError

    def gym_space(self) -> Any:
        raise NotImplementedError

    def to_gym(self, value: Any) -> Any:
        raise NotImplementedError

    def from_gym(self, sample: Any) -> Any:
        raise NotImplementedError

    def tune_space(self) -> dict[str, Any]:
        raise NotImplementedError

    def from_tune(self, config: dict[str, Any]) -> Any:
        return self.from_optuna(config)

    def describe(self) -> str:
        raise NotImplementedError


@dataclass
class Mask(Dimension):
    """A bit vector over a layer group's filters: 1 keeps the filter. At least min_keep ones."""

    length: int = 1
    min_keep: int = 1
    keep_prob: tuple[float, float] = (0.25, 1.0)
    kind: ClassVar[str] = "mask"
    yaml_keys: ClassVar[frozenset[str]] = frozenset({"min_keep", "length", "keep_prob"})

    @classmethod
    def from_yaml(cls, y: YamlDim) -> Mask:
        n = y.family.groups()[y.scope]
        length = y.number("length", n, integer=True)
        if length != n:
            rel = "longer" if length > n else "shorter"
            raise y.err(
                "length",
                f"mask of length {length} is {rel} than its layer group {y.scope!r} ({n} filters)",
            )
        mk = y.number("min_keep", 1, integer=True)
        if mk < 1:
            raise y.err("min_keep", f"must be at least 1 (a layer needs a filter), got {mk}")
        if mk > n:
            raise y.err("min_keep", f"{mk} is more than the {n} filters of group {y.scope!r}")
        kp = y.spec.get("keep_prob", [0.25, 1.0])
        if (
            not isinstance(kp, list)
            or len(kp) != 2
            or not all(isinstance(x, (int, float)) for x in kp)
            or not 0 <= kp[0] <= kp[1] <= 1
        ):
            raise y.err("keep_prob", f"expected [low, high] with 0 <= low <= high <= 1, got {kp!r}")
        return cls(
            y.name, y.target, y.scope, y.condition, length=n, min_keep=mk, keep_prob=tuple(kp)
        )

    def __post_init__(self):
        if self.default is None:
            self.default = tuple([1] * self.length)

    def _repair(self, bits: list[int], rng: random.Random | None) -> tuple[int, ...]:
        """Turn on zeros until min_keep ones (random ones with an rng, else the first ones)."""
        zeros = [i for i, b in enumerate(bits) if not b]
        need = self.min_keep - (len(bits) - len(zeros))
        if need > 0:
            if rng is not None:
                rng.shuffle(zeros)
            for i in zeros[:need]:
                bits[i] = 1
        return tuple(bits)

    def sample(self, rng):
        p = rng.uniform(*self.keep_prob)  # a keep ratio first, so sizes spread evenly
        return self._repair([1 if rng.random() < p else 0 for _ in range(self.length)], rng)

    def mutate(self, value, rng, rate):
        bits = [
            b ^ 1 if rng.random() < rate else b for b in value
        ]  # rate: per-bit flip probability
        return self._repair(bits, rng)

    def crossover(self, a, b, rng):
        if self.length < 2:
            return a, b
        i, j = sorted(rng.sample(range(self.length + 1), 2))
        c1 = list(a[:i]) + list(b[i:j]) + list(a[j:])
        c2 = list(b[:i]) + list(a[i:j]) + list(b[j:])
        return self._repair(c1, rng), self._repair(c2, rng)

    def validate(self, value):
        if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
            raise GenomeError(self.name, f"a mask must be a list of 0/1, got {value!r}")
        if len(value) != self.length:
            raise GenomeError(
                self.name, f"mask has {len(value)} bits, the layer group has {self.length}"
            )
        bits = []
        for b in value:
            if isinstance(b, (bool, np.bool_)) or b in (0, 1):
                bits.append(int(b))
            else:
                raise GenomeError(self.name, f"mask bits must be 0 or 1, got {b!r}")
        if sum(bits) < self.min_keep:
            raise GenomeError(
                self.name, f"mask keeps {sum(bits)} filters, min_keep is {self.min_keep}"
            )
        return tuple(bits)

    def to_json(self, value):
        return list(value)

    def n_genes(self):
        return self.length

    def to_genes(self, value):
        return list(value)

    def features(self, value):
        """The bits, each worth 1/length: masks that differ everywhere differ by 1."""
        return [b / self.length**0.5 for b in value]

    def from_genes(self, genes):
        return self.validate([int(round(g)) for g in genes])

    def _keys(self):
        return [f"{self.name}[{i}]" for i in range(self.length)]

    def optuna_distributions(self):
        from optuna.distributions import IntDistribution

        return {k: IntDistribution(0, 1) for k in self._keys()}

    def to_optuna(self, value):
        return dict(zip(self._keys(), value))

    def from_optuna(self, params):
        # the same repair as `suggest`, so a trial's params give back the genome it suggested
        return self.validate(self._repair([int(params[k]) for k in self._keys()], None))

    def suggest(self, trial):
        return self._repair([trial.suggest_int(k, 0, 1) for k in self._keys()], None)

    def gym_space(self):
        from gymnasium import spaces

        return spaces.MultiBinary(self.length)

    def to_gym(self, value):
        return np.asarray(value, dtype=np.int8)

    def from_gym(self, sample):
        return self._repair([int(b) for b in np.asarray(sample).ravel()], None)

    def tune_space(self):
        from ray import tune

        return {k: tune.choice([0, 1]) for k in self._keys()}

    def from_tune(self, config):
        return self._repair([int(config[k]) for k in self._keys()], None)

    def describe(self):
        return f"mask[{self.length}] min_keep={self.min_keep}"


@dataclass
class Choice(Dimension):
    """One of k options: an op, a kernel size, skip, none."""

    options: tuple = ()
    kind: ClassVar[str] = "choice"
    yaml_keys: ClassVar[frozenset[str]] = frozenset({"options", "default"})

    @classmethod
    def from_yaml(cls, y: YamlDim) -> Choice:
        opts = y.spec.get("options")
        if not isinstance(opts, list) or not opts:
            raise y.err("options", "must be a non-empty list")
        if len(set(map(repr, opts))) != len(opts):
            raise y.err("options", "has duplicates")
        cls.check_options(y, opts)
        fam = y.family
        if y.target == "kernel":
            bad = [o for o in opts if o not in fam.kernel_options or isinstance(o, bool)]
            if bad:
                raise y.err(
                    "options",
                    f"kernel {bad[0]!r} not supported; expected from {list(fam.kernel_options)}",
                )
            default = y.spec.get("default", max(opts))
        elif y.target == "op":
            bad = [o for o in opts if o not in fam.op_options]
            if bad:
                raise y.err(
                    "options", f"unknown op {bad[0]!r}; expected from {', '.join(fam.op_options)}"
                )
            default = y.spec.get(
                "default", fam.default_op() if fam.default_op() in opts else opts[-1]
            )
        else:
            default = y.spec.get("default")
        if default is not None and default not in opts:
            raise y.err("default", f"{default!r} is not one of the options")
        return cls(y.name, y.target, y.scope, y.condition, default=default, options=tuple(opts))

    @classmethod
    def check_options(cls, y: YamlDim, options: list) -> None:
        """Raise for options this kind cannot take (any value will do for a choice)."""

    def __post_init__(self):
        self.options = tuple(self.options)
        if self.default is None and self.options:
            self.default = self.options[-1]
        self._at = {(type(o), o): i for i, o in enumerate(self.options)}

    def index(self, value) -> int:
        i = self._at.get((type(value), value)) if isinstance(value, (str, int, float)) else None
        if i is not None:  # the option itself (the common case: genomes hold the options)
            return i
        for i, o in enumerate(self.options):
            if (
                isinstance(o, str) == isinstance(value, str)
                and isinstance(o, bool) == isinstance(value, bool)
                and o == value
            ):
                return i
        raise GenomeError(self.name, f"{value!r} is not one of {list(self.options)}")

    def sample(self, rng):
        return self.options[rng.randrange(len(self.options))]

    def mutate(self, value, rng, rate):
        if len(self.options) > 1 and rng.random() < rate:
            others = [o for o in self.options if o != value]
            return others[rng.randrange(len(others))]
        return value

    def crossover(self, a, b, rng):
        return (b, a) if rng.random() < 0.5 else (a, b)

    def validate(self, value):
        if isinstance(value, np.generic):
            value = value.item()
        return self.options[self.index(value)]

    def to_genes(self, value):
        return [self.index(value)]

    def features(self, value):
        """One-hot: options are categories, not points on a line (two differ by 1)."""
        out = [0.0] * len(self.options)
        out[self.index(value)] = 0.5**0.5
        return out

    def from_genes(self, genes):
        i = int(genes[0])
        if not 0 <= i < len(self.options):
            raise GenomeError(self.name, f"gene {i} is outside 0..{len(self.options) - 1}")
        return self.options[i]

    def optuna_distributions(self):
        from optuna.distributions import CategoricalDistribution

        return {self.name: CategoricalDistribution(list(self.options))}

    def to_optuna(self, value):
        return {self.name: value}

    def from_optuna(self, params):
        return self.validate(params[self.name])

    def suggest(self, trial):
        return trial.suggest_categorical(self.name, list(self.options))

    def gym_space(self):
        from gymnasium import spaces

        return spaces.Discrete(len(self.options))

    def to_gym(self, value):
        return np.int64(self.index(value))

    def from_gym(self, sample):
        return self.from_genes([int(np.asarray(sample).item())])

    def tune_space(self):
        from ray import tune

        return {self.name: tune.choice(list(self.options))}

    def describe(self):
        return "choice " + "|".join(str(o) for o in self.options)


@dataclass
class WeightSet(Choice):
    """The discrete value set of a layer's weights (binary, ternary, 2/4/8-bit, float)."""

    kind: ClassVar[str] = "weightset"

    @classmethod
    def check_options(cls, y: YamlDim, options: list) -> None:
        bad = [o for o in options if o not in WEIGHT_SETS]
        if bad:
            raise y.err(
                "options", f"unknown weight set {bad[0]!r}; expected from {', '.join(WEIGHT_SETS)}"
            )

    def __post_init__(self):
        bad = [o for o in self.options if o not in WEIGHT_SETS]
        if bad:
            raise GenomeError(
                self.name, f"unknown weight set {bad[0]!r}; known: {list(WEIGHT_SETS)}"
            )
        if self.default is None and self.options:
            # the most precise set keeps everything
            self.default = max(self.options, key=lambda o: levels_of(o) or math.inf)
        super().__post_init__()

    def describe(self):
        return "weights " + "|".join(self.options)


def levels_of(weight_set: str) -> int | None:
    """How many values a weight of the set may take (None: float)."""
    return WEIGHT_SETS[weight_set]


def bits_of(weight_set: str) -> float:
    """Bits one weight is stored in: ceil(log2(levels)) (its code, as the ONNX export packs it:
    ternary's three values take 2 bits); float counts as 32."""
    levels = WEIGHT_SETS[weight_set]
    if levels is None:
        return 32.0
    return float(math.ceil(math.log2(levels)))


@dataclass
class Scale(Dimension):
    """A multiplier in [low, high], on a grid of `step` when given (depth, width, resolution)."""

    low: float = 0.0
    high: float = 1.0
    step: float | None = None
    kind: ClassVar[str] = "scale"
    yaml_keys: ClassVar[frozenset[str]] = frozenset({"low", "high", "step", "default"})

    @classmethod
    def from_yaml(cls, y: YamlDim) -> Scale:
        for key in ("low", "high"):
            if y.spec.get(key) is None:
                raise y.err(key, "required for a scale")
        low, high = y.number("low"), y.number("high")
        if low > high:
            raise y.err("low", f"low {low} is greater than high {high}")
        if low <= 0:
            raise y.err("low", f"a multiplier must be positive, got {low}")
        step = y.spec.get("step")
        if step is not None and y.number("step") <= 0:
            raise y.err("step", f"must be positive, got {step}")
        if step is not None and abs((high - low) / step - round((high - low) / step)) > 1e-6:
            raise y.err("step", f"{step} does not divide [{low}, {high}] into whole steps")
        dim = cls(
            y.name,
            y.target,
            y.scope,
            y.condition,
            default=None,
            low=float(low),
            high=float(high),
            step=float(step) if step else None,
        )
        if y.spec.get("default") is not None:
            try:
                dim.default = dim.validate(y.spec["default"])
            except GenomeError as e:
                raise y.err("default", e.reason) from None
        return dim

    def __post_init__(self):
        if self.default is None:
            self.default = self._snap(self.high)

    def _snap(self, x: float) -> float:
        x = min(self.high, max(self.low, float(x)))
        if self.step:
            k = round((x - self.low) / self.step)
            x = min(self.high, self.low + k * self.step)
        return round(x, 10)

    def grid(self) -> list[float]:
        if not self.step:
            raise GenomeError(self.name, "scale has no step, so no grid")
        n = int(math.floor((self.high - self.low) / self.step + 1e-9))
        return [round(self.low + k * self.step, 10) for k in range(n + 1)]

    def sample(self, rng):
        if self.step:
            g = self.grid()
            return g[rng.randrange(len(g))]
        return self._snap(rng.uniform(self.low, self.high))

    def mutate(self, value, rng, rate):
        if rng.random() >= rate:
            return value
        if self.step:
            g = self.grid()
            i = g.index(self._snap(value)) + rng.choice([-1, 1]) * (1 + int(rng.random() < 0.3))
            return g[min(len(g) - 1, max(0, i))]
        return self._snap(value + rng.gauss(0, 0.15 * (self.high - self.low)))

    def crossover(self, a, b, rng):
        u = rng.random()
        return self._snap(a + u * (b - a)), self._snap(b + u * (a - b))

    def validate(self, value):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
            raise GenomeError(self.name, f"a scale must be a number, got {value!r}")
        v = float(value)
        if not (self.low - 1e-9 <= v <= self.high + 1e-9):
            raise GenomeError(self.name, f"{v} is outside [{self.low}, {self.high}]")
        s = self._snap(v)
        if self.step and abs(s - v) > 1e-6:
            raise GenomeError(self.name, f"{v} is not on the grid {self.low} + k*{self.step}")
        return s

    def to_genes(self, value):
        return [float(value)]

    def features(self, value):
        """The position in [low, high], from 0 to 1."""
        return [(float(value) - self.low) / ((self.high - self.low) or 1.0)]

    def from_genes(self, genes):
        return self._snap(genes[0])

    def optuna_distributions(self):
        from optuna.distributions import FloatDistribution

        return {self.name: FloatDistribution(self.low, self.high, step=self.step)}

    def to_optuna(self, value):
        return {self.name: float(value)}

    def from_optuna(self, params):
        return self.validate(params[self.name])

    def suggest(self, trial):
        return self._snap(trial.suggest_float(self.name, self.low, self.high, step=self.step))

    def gym_space(self):
        from gymnasium import spaces

        return spaces.Box(low=self.low, high=self.high, shape=(1,), dtype=np.float32)

    def to_gym(self, value):
        return np.asarray([value], dtype=np.float32)

    def from_gym(self, sample):
        return self._snap(float(np.asarray(sample).ravel()[0]))

    def tune_space(self):
        from ray import tune

        if self.step:
            return {self.name: tune.choice(self.grid())}
        return {self.name: tune.uniform(self.low, self.high)}

    def from_tune(self, config):
        return self._snap(config[self.name])

    def describe(self):
        return f"scale [{self.low}, {self.high}]" + (f" step {self.step}" if self.step else "")
