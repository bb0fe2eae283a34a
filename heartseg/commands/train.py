"""The training command: the command line's flags → overrides → a plan → a run (or a cross-validation).

With no ``--data`` and no ``./data/Task02_Heart`` it writes the built-in synthetic dataset under ``./data/``
and trains on it with a short CPU schedule, so ``python main.py`` works out of the box.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from heartseg import distributed
from heartseg.commands.train_flags import build_parser, given_flags
from heartseg.data.cases import DatasetSpec
from heartseg.data.dataset import read_dataset
from heartseg.data.download import TASK02_FOLDER, download_task02
from heartseg.data.synthetic import write_synthetic_dataset
from heartseg.devices import select_device
from heartseg.errors import UserError
from heartseg.folder_lock import folder_lock
from heartseg.planning.config import RunConfig
from heartseg.planning.plan import (
    flag,
    plan_run,
)
from heartseg.planning.resume import resume_plan
from heartseg.run import crossval
from heartseg.run.runner import check_run_folder, open_run_folder, plan_and_preprocess, run

DATA_ROOT = Path('data')


SYNTHETIC_FOLDER = 'SyntheticHeart'


# Flags that choose the dataset; every other flag but --resume and --score-folds is a setting or a plan choice.
SOURCE_FLAGS = ('data', 'download', 'download_url')


def main(argv: list[str] | None = None) -> int:
    given = given_flags(build_parser().parse_args(argv))
    with distributed.session(given.get('device')):
        if 'score_folds' in given:
            return score_folds(given)
        if 'plan_only' in given:
            return plan_only(given)
        started = time.perf_counter()
        # Rank 0 plans (and may download or write data); the other ranks take its plan.
        config, dataset, created = distributed.broadcast(configure(given) if distributed.is_main() else None)
        with folder_lock(Path(config.run_dir)) if distributed.is_main() else nullcontext():  # one run per folder
            return run(config, dataset, started, resuming='resume' in given, created=created)


def configure(given: dict[str, Any]) -> tuple[RunConfig, DatasetSpec, bool]:
    """The run's config and dataset, and whether this call created the run folder."""
    config, dataset = plan(given)
    return config, dataset, open_run_folder(config, resuming='resume' in given)


def plan_only(given: dict[str, Any]) -> int:
    """``--plan-only``: plan, check and preprocess every case, print the plan; train nothing, write no run folder."""
    if 'resume' in given:
        raise UserError('--plan-only', 'has no effect with --resume: a resumed run keeps its plan and its cache')
    if distributed.is_main():  # the other torchrun processes have nothing to do
        config, dataset = plan({name: value for name, value in given.items() if name != 'plan_only'})
        check_run_folder(config, resuming=False)
        print(plan_and_preprocess(config, dataset))
    return 0


def plan(given: dict[str, Any]) -> tuple[RunConfig, DatasetSpec]:
    """The config that the flags in ``given`` plan (or resume), and its dataset."""
    if 'resume' in given:
        config = resume_plan(given['resume'], {name: value for name, value in given.items() if name != 'resume'})
        return config, read_dataset(Path(config.data))
    root, synthetic = data_root(given)
    dataset = read_dataset(root)
    overrides = {name: value for name, value in given.items() if name not in SOURCE_FLAGS}
    return plan_run(dataset, select_device(given.get('device', RunConfig.device)), overrides, synthetic), dataset


def data_root(given: dict[str, Any]) -> tuple[Path, bool]:
    """The dataset folder to use, and whether it is the synthetic fallback."""
    if 'download_url' in given and 'download' not in given:
        raise UserError('--download-url', 'has no effect without --download')
    if 'data' in given:
        if 'download' in given:
            raise UserError(
                '--download', 'has no effect with --data: it downloads Task02_Heart into ./data/ to train on'
            )
        return given['data'], False
    if 'download' in given:
        mirror = {'url': given['download_url']} if 'download_url' in given else {}
        return download_task02(DATA_ROOT, **mirror), False
    if (DATA_ROOT / TASK02_FOLDER / 'dataset.json').is_file():
        return DATA_ROOT / TASK02_FOLDER, False
    synthetic = DATA_ROOT / SYNTHETIC_FOLDER
    print(
        f'NOTICE: no --data given and no ./data/{TASK02_FOLDER}; training on the built-in SYNTHETIC dataset '
        f'in {synthetic}/.\n        For real data, run `python main.py --download` (Task02_Heart) or '
        '`python main.py --data PATH` with any MSD or nnU-Net v2 folder.'
    )
    if not (synthetic / 'dataset.json').is_file():
        write_synthetic_dataset(synthetic)
    return synthetic, True


def score_folds(given: dict[str, Any]) -> int:
    """``--score-folds``: predict and score the folds trained apart, then pool them; trains nothing."""
    for name in given:
        if name not in ('score_folds', 'device'):
            raise UserError(flag(name), 'has no effect with --score-folds; leave it out')
    root = given['score_folds']
    if distributed.is_main():
        with folder_lock(root):
            print(crossval.score_trained_folds(root, given.get('device', RunConfig.device)))
        print(f'Done. Scores: {root / "crossval.csv"}, {root / "crossval.json"}.')
    return 0
