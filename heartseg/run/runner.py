"""Running a planned config: one training run, or a K-fold cross-validation fold by fold.

``main.py`` plans (``heartseg.planning``) and hands the config here. A run
splits and preprocesses its cases (once, cached), writes ``config.json`` and
``splits.json``, trains with :func:`training.create_trainer`, and says where
its checkpoints and TensorBoard curves are. Under torchrun, process 0 does
the printing and the writing; every process trains.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import torchio as tio

from heartseg import distributed
from heartseg.data.cases import DatasetSpec
from heartseg.errors import EXIT_INTERRUPTED, DiskFull, UserError
from heartseg.files import atomic_write_text, ensure_writable_dir
from heartseg.folder_lock import refuse_if_in_use
from heartseg.planning.config import RunConfig, load_config, save_config
from heartseg.planning.describe import plan_text
from heartseg.planning.plan import RESUMABLE_SETTINGS, cases_in_use, run_split, split_description
from heartseg.preprocessing.cache import preprocess_cases
from heartseg.preprocessing.preprocessing import Preprocessing
from heartseg.run import crossval
from training import create_trainer


def open_run_folder(config: RunConfig, resuming: bool) -> bool:
    """Check that ``config.run_dir`` can take this run, and create it; whether this call created it."""
    check_run_folder(config, resuming)
    run_dir = Path(config.run_dir)
    created = not run_dir.exists()
    ensure_writable_dir(run_dir)
    return created


def check_run_folder(config: RunConfig, resuming: bool) -> None:
    """A one-line refusal if ``config.run_dir`` cannot take this run; writes nothing."""
    run_dir = Path(config.run_dir)
    refuse_if_in_use(run_dir)
    if not resuming and ((run_dir / 'last.pt').exists() or crossval.fold_folder(run_dir, 0).exists()):
        raise UserError(
            run_dir, 'run folder already holds a run; use --resume to continue it or choose another --run-dir'
        )
    ranks = distributed.world_size()
    if config.batch_size % ranks:
        raise UserError(
            '--batch-size',
            f'{config.batch_size} patches per step cannot be shared evenly by {ranks} '
            f'processes; the batch size is global, so use a multiple of {ranks}',
        )


def run(config: RunConfig, dataset: DatasetSpec, started: float, resuming: bool, created: bool) -> int:
    """Train ``config``: a whole cross-validation, or one run; the exit code.

    Args:
        started: When set-up began; the time limit counts set-up too.
        resuming: Whether the command was ``--resume``.
        created: Whether this command created the run folder (removed again if preparing the data fails).
    """
    run_dir = Path(config.run_dir)
    cleanup_dir = run_dir if created else None
    if config.cross_validation:
        return cross_validate(config, dataset, started, resuming, cleanup_dir)
    has_checkpoint = resuming and (run_dir / 'last.pt').is_file()
    if resuming and not has_checkpoint and distributed.is_main():
        # A job requeued after preemption resumes with the same command, even if the kill came before any checkpoint.
        print(
            f'{run_dir}: no checkpoint yet (stopped before its first epoch ended); starting from epoch 0 with its '
            'config.json'
        )
    return train_run(config, dataset, started, has_checkpoint, cleanup_dir, resume_dir=run_dir)


def prepare_subjects(config: RunConfig, dataset: DatasetSpec, resuming: bool) -> dict[str, list[tio.Subject]]:
    """Split, preprocess (validating every case) and write the run's config and split."""
    run_dir = Path(config.run_dir)
    by_id = {case.case_id: case for case in cases_in_use(dataset, config.max_cases)}
    split = run_split(config, list(by_id), config.fold)
    grouping = split_description(config, list(by_id))
    main_rank = distributed.is_main()
    if main_rank:
        print(plan_text(config, len(split['training']), len(split['validation']), grouping))
    subjects = {name: _preprocess(config, dataset, [by_id[i] for i in ids]) for name, ids in split.items()}
    if main_rank:
        save_config(config, run_dir / 'config.json', resuming)
        atomic_write_text(run_dir / 'splits.json', json.dumps({**split, 'grouping': grouping}, indent=1))
    return subjects


def plan_and_preprocess(config: RunConfig, dataset: DatasetSpec) -> str:
    """Print the plan (of fold 0 for a cross-validation) and preprocess every case in use; what was done."""
    cases = list(cases_in_use(dataset, config.max_cases))
    case_ids = [case.case_id for case in cases]
    fold = 0 if config.cross_validation else config.fold
    split = run_split(config, case_ids, fold)
    plan = plan_text(config, len(split['training']), len(split['validation']), split_description(config, case_ids))
    print(plan + (f' (fold {fold} of {config.folds})' if config.folds else ''))
    _preprocess(config, dataset, cases)
    return (
        f'Plan only: {len(cases)} cases checked and preprocessed into {_cache_folder(config, dataset)}; '
        f'nothing trained and {config.run_dir} not written. The same command without --plan-only trains on this cache.'
    )


def _cache_folder(config: RunConfig, dataset: DatasetSpec) -> Path:
    return Path(config.cache_dir) / dataset.name


def _preprocess(config: RunConfig, dataset: DatasetSpec, cases: list) -> list[tio.Subject]:
    preprocessing = Preprocessing(config.target_spacing)
    return preprocess_cases(cases, dataset, preprocessing, _cache_folder(config, dataset), distributed.is_main())


def train_run(
    config: RunConfig, dataset: DatasetSpec, started: float, resuming: bool, cleanup_dir: Path | None, resume_dir: Path
) -> int:
    """Train one run (a whole run, or one fold) into ``config.run_dir``.

    Args:
        started: When set-up began; the time limit counts set-up too.
        resuming: Whether to continue from ``config.run_dir``'s ``last.pt``.
        cleanup_dir: Removed if preparing the data fails, so a failed start leaves nothing behind.
        resume_dir: What ``--resume`` takes to continue after an interruption.
    """
    run_dir = Path(config.run_dir)
    try:
        with distributed.main_process_first():  # rank 0 fills the preprocessing cache
            subjects = prepare_subjects(config, dataset, resuming)
    except UserError:
        if cleanup_dir is not None and distributed.is_main():
            shutil.rmtree(cleanup_dir, ignore_errors=True)
        raise
    trainer = create_trainer(config, subjects['training'], subjects['validation'])
    if resuming:
        trainer.resume()
    else:
        trainer.schedule.elapsed_seconds = time.perf_counter() - started  # the time limit counts set-up too
    if not distributed.is_main():
        trainer.fit()
        return 0
    if resuming:
        print(f'Resuming {run_dir} after epoch {trainer.start_epoch}')
    if distributed.world_size() > 1:
        print(
            f'Distributed: {distributed.world_size()} processes, '
            f'{config.batch_size // distributed.world_size()} patches each per step'
        )
    print(f'TensorBoard logs: {run_dir}  (watch with: tensorboard --logdir {resume_dir.parent})')
    try:
        final = trainer.fit()
    except KeyboardInterrupt:
        print(
            f'\nInterrupted. The last completed epoch is saved; resume with: python main.py --resume {resume_dir}',
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except DiskFull as error:
        raise DiskFull(
            error.where,
            f'the last completed epoch is saved; free some space and resume with: python main.py --resume {resume_dir}',
        ) from None
    print(
        f'Done. {_outcome(trainer, final)} Checkpoints: {run_dir / "best.pt"}, {run_dir / "last.pt"}. '
        f'Curves: tensorboard --logdir {resume_dir.parent}'
    )
    return 0


def _outcome(trainer, final: float) -> str:
    if not trainer.has_validation:
        return 'No validation split: best.pt holds the final weights.'
    if trainer.selects_best:
        return f'Best validation Dice {final:.4f}.'
    return f'Final validation Dice {final:.4f} (best.pt holds the final weights).'


def cross_validate(
    config: RunConfig, dataset: DatasetSpec, started: float, resuming: bool, cleanup_dir: Path | None
) -> int:
    """Train folds 0..K-1 in turn, scoring each fold's validation cases as it ends; then pool the scores.

    A resumed cross-validation skips the scored folds and resumes the fold it was in.
    """
    root = Path(config.run_dir)
    if distributed.is_main():
        save_config(config, root / 'config.json', resuming)
        print(crossval.schedule_line(config.folds, config.time_limit, root))
    for fold in range(config.folds):
        fold_dir = crossval.fold_folder(root, fold)
        if distributed.broadcast(crossval.is_scored(fold_dir) if distributed.is_main() else None):
            continue
        planned, fold_resumes = distributed.broadcast(
            fold_config(config, dataset, fold) if distributed.is_main() else None
        )
        code = train_run(planned, dataset, started, fold_resumes, cleanup_dir if fold == 0 else None, resume_dir=root)
        if code:
            return code
        if distributed.is_main():
            crossval.score_trained_fold(fold_dir, fold, list(dataset.cases), config.device)
        distributed.barrier()
        started = time.perf_counter()
    if distributed.is_main():
        print(crossval.write_cross_validation(root, config.folds, config.outputs, list(dataset.cases)))
        print(
            f'Done. Scores: {root / "crossval.csv"}, {root / "crossval.json"}. '
            f'The fold ensemble predicts with: python predict.py --checkpoint {root} --input ... --output ...'
        )
    return 0


def fold_config(config: RunConfig, dataset: DatasetSpec, fold: int) -> tuple[RunConfig, bool]:
    """The config of one fold of a cross-validation, and whether the fold resumes.

    A fold that has started keeps its own saved config (its time share
    included); only the settings a resume may change follow the cross-validation's.
    """
    fold_dir = crossval.fold_folder(Path(config.run_dir), fold)
    if (fold_dir / 'config.json').is_file():
        saved = load_config(fold_dir / 'config.json')
        for setting in RESUMABLE_SETTINGS - {'time_limit', 'epochs'}:
            setattr(saved, setting, getattr(config, setting))
        return saved, (fold_dir / 'last.pt').is_file()
    time_limit = 0.0
    if config.time_limit:
        spent, seconds_per_case = crossval.scored_seconds(Path(config.run_dir), config.folds)
        case_ids = [case.case_id for case in cases_in_use(dataset, config.max_cases)]
        validation_cases = len(run_split(config, case_ids, fold)['validation'])
        time_limit = crossval.fold_training_minutes(
            config.time_limit, fold, config.folds, spent, seconds_per_case, validation_cases
        )
    return replace(config, fold=fold, run_dir=str(fold_dir), time_limit=time_limit), False
