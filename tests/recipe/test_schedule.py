"""heartseg.training.schedule: polynomial learning rate, and the time budget that produced the headline numbers."""

from __future__ import annotations

import pytest

from heartseg.training.schedule import (
    EPOCH_OVERHEAD,
    VALIDATION_SHARE,
    ScheduleState,
    TimeBudget,
    fit_epochs_to_budget,
    poly_lr,
)


def test_poly_lr_starts_at_the_initial_rate_decays_monotonically_and_ends_at_zero():
    rates = [poly_lr(3e-3, epoch, 20) for epoch in range(21)]
    assert rates[0] == 3e-3 and rates[-1] == 0
    assert all(later < earlier for earlier, later in zip(rates, rates[1:]))
    assert rates[10] == pytest.approx(3e-3 * 0.5**0.9)


def simulate(
    limit: float, set_up: float, epoch_seconds: float, validation_seconds: float, automatic: bool, val_every: int = 1
) -> tuple[float, list[int], int]:
    """Run the scheduler against a clock where every epoch and validation takes a fixed time."""
    budget = TimeBudget(limit, max_epochs=10_000, automatic_validation=automatic)
    elapsed, total, completed, validated, train_times, last_validated = set_up, 10_000, 0, [], [], 0
    while completed < total:
        elapsed += epoch_seconds
        train_times.append(epoch_seconds)
        completed += 1
        if completed - last_validated >= val_every or completed == total:
            elapsed += validation_seconds
            validated.append(completed)
            last_validated = completed
        total, val_every = fit_epochs_to_budget(
            budget, completed, elapsed, train_times, validation_seconds, val_every, last_validated
        )
    return elapsed, validated, completed


@pytest.mark.parametrize('automatic', [True, False], ids=['automatic-validation', 'every-epoch'])
@pytest.mark.parametrize('epoch_seconds,validation_seconds', [(10.0, 2.0), (10.0, 9.0), (17.0, 25.0)])
def test_a_time_limited_run_ends_on_a_validated_epoch_within_its_budget(automatic, epoch_seconds, validation_seconds):
    limit = 30 * 60
    elapsed, validated, completed = simulate(
        limit, set_up=40, epoch_seconds=epoch_seconds, validation_seconds=validation_seconds, automatic=automatic
    )
    assert elapsed <= limit, f'ran {elapsed - limit:.0f} s over the budget'
    assert validated[-1] == completed, 'the last epoch must be validated'
    # Unused at most: the epoch and validation reserved to end on a
    # validated epoch, and the epoch that no longer fitted.
    assert limit - elapsed < EPOCH_OVERHEAD * epoch_seconds + epoch_seconds + 2 * validation_seconds
    if automatic:
        validation_time = validation_seconds * len(validated)
        assert validation_time <= VALIDATION_SHARE * completed * epoch_seconds * EPOCH_OVERHEAD + validation_seconds * 2


def test_a_run_past_its_budget_still_gets_one_validated_epoch_then_stops():
    budget = TimeBudget(limit_seconds=100, max_epochs=10_000, automatic_validation=False)
    unvalidated = fit_epochs_to_budget(
        budget, completed=5, elapsed=150, train_times=[20.0] * 5, val_seconds=5, val_every=2, last_validated_epoch=4
    )
    assert unvalidated == (6, 2)
    assert fit_epochs_to_budget(
        budget, completed=6, elapsed=180, train_times=[20.0] * 6, val_seconds=5, val_every=2, last_validated_epoch=6
    ) == (6, 2)


def test_the_epoch_cap_bounds_a_generous_budget():
    budget = TimeBudget(limit_seconds=10_000, max_epochs=12, automatic_validation=False)
    assert fit_epochs_to_budget(
        budget, completed=3, elapsed=30, train_times=[10.0] * 3, val_seconds=1, val_every=1, last_validated_epoch=3
    ) == (12, 1)


def test_one_slow_epoch_does_not_shorten_the_run():
    budget = TimeBudget(limit_seconds=1000, max_epochs=10_000, automatic_validation=False)
    steady = fit_epochs_to_budget(budget, 5, 50, [10.0] * 5, 0.0, 1, 5)
    with_hiccup = fit_epochs_to_budget(budget, 5, 50, [10.0, 10.0, 10.0, 10.0, 60.0], 0.0, 1, 5)
    assert with_hiccup == steady


# The keys of the schedule in every last.pt written so far: a resume reads them.
CHECKPOINT_KEYS = {
    'epoch',
    'total_epochs',
    'best_dice',
    'elapsed_seconds',
    'train_times',
    'val_every',
    'val_seconds',
    'last_validated_epoch',
}


def test_the_schedule_state_is_saved_under_the_keys_checkpoints_have_always_had():
    assert set(ScheduleState(total_epochs=5, val_every=1).state_dict()) == CHECKPOINT_KEYS


def test_a_checkpoint_s_schedule_is_restored_with_each_field_s_type():
    checkpoint = {
        'epoch': 3,
        'total_epochs': 8,
        'best_dice': 0.5,
        'elapsed_seconds': 12,
        'train_times': [3, 4.5, 4],
        'val_every': 2,
        'val_seconds': 1,
        'last_validated_epoch': 2,
        'model': {},
        'format': 'heartseg',
    }
    state = ScheduleState(total_epochs=1, val_every=1)
    state.load_state_dict(checkpoint)
    assert state.state_dict() == {key: checkpoint[key] for key in CHECKPOINT_KEYS}
    assert type(state.elapsed_seconds) is float and all(type(seconds) is float for seconds in state.train_times)
    assert type(state.epoch) is int
