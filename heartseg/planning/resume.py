"""Planning a resumed run: its saved config, with only the settings a resume may change replaced.

A path setting (the data, the run and cache folders) may be named again, spelled any way, if it names the same place.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from heartseg.errors import UserError
from heartseg.files import canonical_folder
from heartseg.planning.config import RunConfig, load_config
from heartseg.planning.plan import RESUMABLE_SETTINGS, RUN_PLACES, SETTINGS, flag, settings_given


def resume_plan(run_dir: Path, overrides: dict[str, Any]) -> RunConfig:
    """The saved config of the run in ``run_dir``, with only the settings a resume may change.

    Any other override must equal the saved setting, and a plan choice is
    refused: a resumed run keeps its plan.
    """
    resumable = ', '.join(flag(name) for name in sorted(RESUMABLE_SETTINGS))
    if plan_choices := sorted(name for name, value in overrides.items() if name not in SETTINGS and value is not None):
        raise UserError(
            flag(plan_choices[0]),
            f'cannot change the plan of {run_dir}: a resumed run keeps its own (only {resumable} may change)',
        )
    config = load_config(run_dir / 'config.json')
    saved = asdict(config)
    given = settings_given(overrides)
    for name, value in given.items():
        if name in RUN_PLACES:
            if canonical_folder(Path(value)) != canonical_folder(Path(saved[name])):
                raise UserError(
                    flag(name),
                    f'{value} is not {saved[name]}, which {run_dir} uses; a resumed run keeps its data and folders',
                )
        elif name in RESUMABLE_SETTINGS:
            setattr(config, name, value)
        elif _normalise(value) != _normalise(saved[name]):
            raise UserError(
                run_dir,
                f'cannot resume with {flag(name)} {value}: the run used {saved[name]} (only {resumable} may change)',
            )
    if saved['time_limit'] and config.time_limit == 0 and 'epochs' not in given:
        raise UserError(
            '--time-limit',
            f'0 ends the time limit of {run_dir}: give --epochs too, the number of epochs to train in all',
        )
    config.run_dir = str(run_dir)
    return config


def _normalise(value: Any) -> Any:
    return json.loads(json.dumps(value))
