"""Run tracking: every trial's learning curve and final metrics as TensorBoard event files in
the run folder (`tensorboard/trial-NNNN-<genome id>`), from either runner; the study holds the
same curves as intermediate values (optuna-dashboard shows them).

TensorBoard rather than MLflow: its event files need no server or database beside the run,
`tensorboardX` comes with Ray Tune already, and the Tune runner writes its own there too.

    tensorboard --logdir runs/<run>/tensorboard"""

from __future__ import annotations

import logging
import numbers
from pathlib import Path

from search.records import TrialRecord

log = logging.getLogger(__name__)


class TensorBoardLog:
    """Writes one event file per trial; never fails the run (a warning if it cannot)."""

    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir) / "tensorboard"
        self.broken = False

    def __call__(self, rec: TrialRecord, curve: list[dict]) -> None:
        if self.broken or not rec.complete:
            return
        try:
            from tensorboardX import SummaryWriter

            with SummaryWriter(str(self.dir / f"trial-{rec.number:04d}-{rec.genome_id}")) as w:
                for point in curve:
                    for k, v in point.items():
                        if k != "epoch" and isinstance(v, numbers.Number):
                            w.add_scalar(f"epoch/{k}", float(v), int(point["epoch"]))
                for k, v in rec.metrics.items():
                    if isinstance(v, numbers.Number) and not isinstance(v, bool):
                        w.add_scalar(f"final/{k}", float(v), rec.number)
        except Exception as e:  # noqa: BLE001 - tracking never loses a run
            self.broken = True
            log.warning("TensorBoard logging stopped: %s", e)
