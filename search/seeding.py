"""Genomes from elsewhere: a JSON file of genomes, a run's `pareto.json` or `formula.json`, or a
whole run folder (its complete trials, best first). Used to seed populations and studies and by
the `given` optimiser."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from spaces.errors import ArchsearchError, ConfigError
from spaces.space import Genome, Space


def _from_json_obj(obj: Any) -> list[dict]:
    if isinstance(obj, list):
        return [o.get("genome", o) if isinstance(o, dict) else o for o in obj]
    if isinstance(obj, dict):
        for key in ("genomes", "targets", "front", "trials"):  # formula.json: its targets
            if key in obj and isinstance(obj[key], list):
                return _from_json_obj(obj[key])
        if "genome" in obj:
            return [obj["genome"]]
        return [obj]
    raise ValueError("expected a genome, a list of genomes or {'genomes': [...]}")


def _run_folder(path: Path, space: Space, file: str | None, field: str) -> list[dict]:
    """A run's complete trials read in `space`: its front first, then the rest, best first."""
    from search.runs import open_run
    from spaces.config import read_yaml

    other = read_yaml(path / "config.yaml").get("name")
    if other != space.name:
        raise ConfigError(
            file, field, f"{str(path)!r} is a run of space {other!r}, not {space.name!r}"
        )
    run = open_run(path, space)
    front = run.front()
    ids = {r.genome_id for r in front}
    rest = sorted(
        (r for r in run.complete if r.genome_id not in ids),
        key=lambda r: [-s * v for s, v in zip(run.signs, r.values)],
    )
    return [space.to_json(r.genome) for r in front + rest]


def load_genomes(
    source: str, space: Space, file: str | None = None, field: str = "seeds"
) -> list[Genome]:
    """Read genomes for `space` from `source` (a JSON / JSON-lines file or a run folder); every
    genome is validated, and an error names the source and the genome's position."""
    p = Path(source).expanduser()
    if not p.exists():
        raise ConfigError(file, field, f"{source!r} does not exist")
    try:
        if p.is_dir():
            if not (p / "config.yaml").exists():
                raise ConfigError(
                    file, field, f"{source!r} is neither a genome file nor a run folder"
                )
            raw = _run_folder(p, space, file, field)
        else:
            text = p.read_text()
            try:
                raw = _from_json_obj(json.loads(text))
            except json.JSONDecodeError:  # JSON lines
                raw = [
                    g
                    for line in text.splitlines()
                    if line.strip()
                    for g in _from_json_obj(json.loads(line))
                ]
    except (ValueError, OSError) as e:
        raise ConfigError(file, field, f"cannot read genomes from {source!r}: {e}") from None
    out = []
    for i, g in enumerate(raw):
        try:
            out.append(space.canonical(space.from_json(g)))
        except ArchsearchError as e:
            raise ConfigError(file, field, f"genome {i} of {source!r}: {e}") from None
        except (TypeError, KeyError, ValueError) as e:
            raise ConfigError(
                file, field, f"genome {i} of {source!r} does not fit space {space.name!r}: {e}"
            ) from None
    if not out:
        raise ConfigError(file, field, f"{source!r} holds no genome")
    return out
