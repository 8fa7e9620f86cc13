"""Hypervolume of a set of objective vectors: the optimisers' multi-objective yardstick."""

from __future__ import annotations


def hypervolume_2d(points: list[list[float]], signs: list[float], ref: list[float]) -> float:
    """Area dominated by `points` and bounded by `ref` (signs: +1 maximise, -1 minimise);
    points that do not dominate the reference add nothing."""
    if len(signs) != 2:
        raise ValueError("hypervolume_2d takes two objectives")
    # turn both into minimisation relative to the reference
    pts = [(-signs[0] * p[0], -signs[1] * p[1]) for p in points]
    r = (-signs[0] * ref[0], -signs[1] * ref[1])
    pts = sorted((x, y) for x, y in pts if x < r[0] and y < r[1])
    area, best_y = 0.0, r[1]
    for x, y in pts:
        if y < best_y:
            area += (r[0] - x) * (best_y - y)
            best_y = y
    return area
