"""The learning-rate schedule, and the epoch count fitted to a wall-clock budget.

With ``--time-limit`` the number of epochs is not known in advance: after each
epoch, :func:`fit_epochs_to_budget` re-plans it from the measured epoch and
validation times, so the polynomial learning rate still anneals to zero and
the run ends on a validated epoch within the budget.

Example:
    >>> poly_lr(1e-3, epoch=0, total_epochs=10)
    0.001
    >>> budget = TimeBudget(limit_seconds=600, max_epochs=10_000, automatic_validation=False)
    >>> fit_epochs_to_budget(budget, completed=10, elapsed=100, train_times=[10.0] * 10,
    ...                      val_seconds=2, val_every=1, last_validated_epoch=10)
    (49, 1)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

# With automatic validation (--val-every 0), validation may take this share of the time.
VALIDATION_SHARE = 0.1
# Logging and checkpoints add a little to each epoch's training time.
EPOCH_OVERHEAD = 1.03
# The epoch time is the median of the latest epochs, so one slow epoch does not shorten the run.
RECENT_EPOCHS = 5


def poly_lr(initial: float, epoch: int, total_epochs: int) -> float:
    """nnU-Net's polynomial decay (exponent 0.9), reaching zero at the end of training."""
    return initial * (1 - epoch / max(total_epochs, 1)) ** 0.9


@dataclass
class ScheduleState:
    """Where a run stands in its schedule: what each checkpoint saves, under these names, and a resume restores.

    Example:
        >>> state = ScheduleState(total_epochs=10, val_every=2, epoch=3, train_times=[4.0, 4.5, 4.2])
        >>> restored = ScheduleState(total_epochs=10, val_every=1)
        >>> restored.load_state_dict({**state.state_dict(), 'model': 'the weights, beside it in the checkpoint'})
        >>> restored == state
        True
    """

    total_epochs: int
    val_every: int
    epoch: int = 0  # epochs completed
    best_dice: float = -1.0  # below any Dice, until a validation
    elapsed_seconds: float = 0.0  # set-up and completed epochs
    train_times: list[float] = field(default_factory=list)  # each epoch's training seconds, without validation
    val_seconds: float = 0.0  # the latest validation's
    last_validated_epoch: int = 0

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Take every field from ``state`` (a checkpoint, which holds more), converted to the field's type."""
        for name, current in asdict(self).items():
            value = state[name]
            setattr(self, name, [float(item) for item in value] if isinstance(current, list) else type(current)(value))


@dataclass(frozen=True)
class TimeBudget:
    """A run's wall-clock limit, set-up included."""

    limit_seconds: float
    max_epochs: int
    automatic_validation: bool


def fit_epochs_to_budget(
    budget: TimeBudget,
    completed: int,
    elapsed: float,
    train_times: list[float],
    val_seconds: float,
    val_every: int,
    last_validated_epoch: int,
) -> tuple[int, int]:
    """The total epoch count and validation interval that fit the time left.

    Args:
        completed: Epochs done so far.
        elapsed: Seconds spent so far, set-up included.
        train_times: Seconds of each training epoch so far (without validation).
        val_seconds: Seconds of the latest validation.
        val_every: The current validation interval.
        last_validated_epoch: The latest epoch that ended with a validation.
    """
    train_seconds = float(np.median(train_times[-RECENT_EPOCHS:])) * EPOCH_OVERHEAD
    if budget.automatic_validation:
        val_every = max(1, math.ceil(val_seconds / (VALIDATION_SHARE * train_seconds)))
    seconds_per_epoch = train_seconds + val_seconds / val_every
    # Reserve one epoch and a validation, so the run can always end on a validated epoch.
    spare = budget.limit_seconds - elapsed - train_seconds - val_seconds
    remaining = max(0, int(spare // seconds_per_epoch))
    if remaining == 0 and last_validated_epoch != completed:
        remaining = 1
    return min(budget.max_epochs, completed + remaining), val_every
