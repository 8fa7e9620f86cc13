"""Errors that carry the file and the field, so the CLI can print one clear line and exit 2."""

from __future__ import annotations


class ArchsearchError(Exception):
    """Base of every error archsearch reports to a user (exit code 2 in the CLI)."""


class ConfigError(ArchsearchError):
    """Bad input: names the file, the field and the reason."""

    def __init__(self, file: str | None, field: str | None, reason: str):
        self.file = str(file) if file is not None else None
        self.field = field
        self.reason = reason
        super().__init__(self.line())

    def __reduce__(self):  # crosses process boundaries (Ray workers) intact
        return (ConfigError, (self.file, self.field, self.reason))

    def line(self) -> str:
        where = ": ".join(p for p in (self.file, self.field) if p)
        return f"{where}: {self.reason}" if where else self.reason


class GenomeError(ArchsearchError):
    """A genome value that does not fit its space."""

    def __init__(self, dim: str, reason: str):
        self.dim = dim
        self.reason = reason
        super().__init__(f"genome field '{dim}': {reason}")

    def __reduce__(self):
        return (GenomeError, (self.dim, self.reason))
