"""The dimension kinds a space file can name (`kind:` of a dimension). A new kind is a
`Dimension` subclass in a file of its own (`spaces.dims` says what it implements) and one entry
below."""

from __future__ import annotations

from spaces.dims import Choice, Dimension, Mask, Scale, WeightSet

KINDS: dict[str, type[Dimension]] = {k.kind: k for k in (Mask, Choice, Scale, WeightSet)}
