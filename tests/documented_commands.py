"""The commands that README.md and docs/ give, and how the tests run each one as written.

A command is a line of a ```bash block: a trailing backslash joins the next line, ``#`` starts a
comment, and ``&&`` separates the steps of a set-up line. Every step is in :data:`COMMANDS`, as one of

- :data:`SET_UP`: what ``.ci/run`` itself runs (the installs and the test command);
- :class:`Runs`: run by ``tests/test_documented_commands.py`` with its exact text, from a project folder
  laid out as CI lays it out (the scripts, ``../shared`` beside them), holding the files it names
  (a tiny trained model, a folder of scans), shortened only by a flag inserted to stop it early;
- :class:`NotRun`: the reason it cannot run here.

``tests/test_docs.py`` fails for a documented step that is not in :data:`COMMANDS`, or for an entry
of :data:`COMMANDS` that the manual no longer gives.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FENCE = re.compile(r'^```(\w*)\s*$')


def manual_pages() -> list[Path]:
    return [REPO / 'README.md', *sorted((REPO / 'docs').rglob('*.md'))]


def documented_steps(page: Path) -> list[str]:
    """The steps of every ```bash block on ``page``, in order, each as one line of text."""
    steps, language, pending = [], None, ''
    for line in page.read_text(encoding='utf-8').splitlines():
        fence = FENCE.match(line.strip())
        if fence:
            language = None if language is not None else fence.group(1)
            continue
        if language != 'bash':
            continue
        line = pending + line.strip()
        if line.endswith('\\'):
            pending = line[:-1].rstrip() + ' '
            continue
        pending = ''
        command = re.sub(r'(^|\s)#.*$', '', line).strip()
        if command:
            steps += [step.strip() for step in command.split(' && ')]
    return steps


@dataclass(frozen=True)
class Runs:
    """How the tests run a documented command.

    Args:
        needs: What the project folder holds before it runs (see ``tests/test_documented_commands.py``).
        stop: Flags that stop it early, appended (or inserted before ``stop_before``).
        expect: Text its output must hold, ``expect_times`` times at least.
        serves: It serves until stopped: it passes once ``expect`` appears, then it is stopped.
        after: A documented line run just before it in the same shell (it sets a variable this one uses).
    """

    needs: tuple[str, ...] = ()
    stop: str = ''
    stop_before: str = ''
    expect: str = ''
    expect_times: int = 1
    serves: bool = False
    after: str = ''

    def shell_text(self, documented: str) -> str:
        """The command as run: the documented text, with only the stop flags added."""
        if not self.stop:
            command = documented
        elif self.stop_before:
            assert documented.count(self.stop_before) == 1, f'{self.stop_before!r} must occur once in {documented!r}'
            command = documented.replace(self.stop_before, f' {self.stop}{self.stop_before}')
        else:
            command = f'{documented} {self.stop}'
        return f'{self.after}\n{command}' if self.after else command


@dataclass(frozen=True)
class NotRun:
    why: str


SET_UP = NotRun('.ci/run runs it: it installs, or it is the test command itself')
PLAN_ONLY = '--plan-only'
# What a documented command names, made before it runs: each maps to a maker in tests/test_documented_commands.py.
SHARED = 'shared'  # ../shared/data, read by path: the command is skipped, with the reason, where it is absent

COMMANDS: dict[str, Runs | NotRun] = {
    'python3 -m venv .venv': SET_UP,
    '. .venv/bin/activate': SET_UP,
    'pip install -r requirements.txt': SET_UP,
    'pip install -r requirements-dev.txt': SET_UP,
    'pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu': SET_UP,
    'ruff check .': SET_UP,
    'python -m pytest': SET_UP,
    'python main.py': Runs(stop=PLAN_ONLY, expect='Plan only: 24 cases'),
    'python main.py --data ../shared/data/LA2018 --run-dir runs/la --time-limit 30': Runs(
        needs=(SHARED,), stop=PLAN_ONLY, expect='Plan only: 80 cases'
    ),
    'python predict.py --checkpoint runs/la/best.pt --input ../shared/data/LA2018/dataset.json --subset validation '
    '--output runs/la/predictions --labels ../shared/data/LA2018/labelsTr': Runs(
        needs=(SHARED, 'runs/la'), expect='dice'
    ),
    'tensorboard --logdir runs': Runs(needs=('runs/cv',), expect='http://', serves=True),
    'RUN=$(ls -d runs/*/ | tail -n 1)': NotRun('sets RUN for the next line, and runs with it there'),
    'python predict.py --checkpoint $RUN --input data/SyntheticHeart/dataset.json --subset validation '
    '--labels data/SyntheticHeart/labelsTr --output ${RUN}predictions': Runs(
        needs=('data/SyntheticHeart', 'runs/20260101-000000'), expect='dice', after='RUN=$(ls -d runs/*/ | tail -n 1)'
    ),
    'python main.py --data ../shared/data/LA2018 --max-cases 16 --target-spacing 2.0 --levels 3 --epochs 10 '
    '--steps-per-epoch 20': Runs(needs=(SHARED,), stop=PLAN_ONLY, expect='Plan only: 16 cases'),
    'python main.py --data ../shared/data/LA2018 --folds 5 --run-dir runs/cv --time-limit 60': Runs(
        needs=(SHARED,), stop=PLAN_ONLY, expect='(fold 0 of 5)'
    ),
    'python predict.py --checkpoint runs/cv --input scans/ --output masks/': Runs(
        needs=('runs/cv', 'scans'), expect='masks in masks'
    ),
    'for i in 0 1 2 3 4; do CUDA_VISIBLE_DEVICES=$i python main.py --data D --folds 5 --fold $i '
    '--run-dir runs/cv/fold_$i & done; wait': Runs(
        needs=('D',), stop=PLAN_ONLY, stop_before=' & done', expect='Plan only: 6 cases', expect_times=5
    ),
    'python main.py --score-folds runs/cv': Runs(needs=('runs/cv',), expect='crossval.csv'),
    'python main.py --data ../shared/data/LA2018 --val-fraction 0 --time-limit 60 --run-dir runs/la_all': Runs(
        needs=(SHARED,), stop=PLAN_ONLY, expect='Plan only: 80 cases'
    ),
    'python analyze_data.py ../shared/data/LA2018 --output analysis/': Runs(needs=(SHARED,), expect='Wrote analysis'),
    'python export.py --checkpoint runs/la/best.pt --output la.onnx': Runs(needs=(SHARED, 'runs/la'), expect='la.onnx'),
    'python export.py --checkpoint runs/la/best.pt --output la.pt': Runs(needs=(SHARED, 'runs/la'), expect='la.pt'),
    'python predict.py --checkpoint la.onnx --input scans/ --output masks/': Runs(
        needs=(SHARED, 'la.onnx', 'scans'), expect='masks in masks'
    ),
    'torchrun --standalone --nproc_per_node=4 main.py --data data/Task02_Heart --run-dir runs/ddp --batch-size 8': Runs(
        needs=('data/Task02_Heart',), stop=PLAN_ONLY, expect='Plan only: 6 cases'
    ),
    'torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 --rdzv_id=heart '
    'main.py ...': NotRun('a template for several machines (HOST, "..."); the one-machine torchrun line above runs'),
    'python main.py --data nnUNet_raw/Dataset002_Heart --splits nnUNet_preprocessed/Dataset002_Heart/splits_final.json '
    '--folds 5 --run-dir runs/cv': Runs(
        needs=('nnUNet_raw/Dataset002_Heart', 'nnUNet_preprocessed/Dataset002_Heart'),
        stop=PLAN_ONLY,
        expect='split from splits_final.json',
    ),
    'python predict.py --checkpoint runs/cv --input nnUNet_raw/Dataset002_Heart --output masks/': Runs(
        needs=('runs/cv', 'nnUNet_raw/Dataset002_Heart'), expect='masks in masks'
    ),
    'python analyze_data.py nnUNet_raw/Dataset002_Heart': Runs(needs=('nnUNet_raw/Dataset002_Heart',), expect='Wrote '),
    'python analyze_data.py ../shared/data/ACDC --output analysis/acdc': Runs(
        needs=(SHARED,), expect='Wrote analysis/acdc'
    ),
    'python main.py --data ../shared/data/ACDC --run-dir runs/acdc --time-limit 30': Runs(
        needs=(SHARED,), stop=PLAN_ONLY, expect='Plan only: 160 cases'
    ),
    'python predict.py --checkpoint runs/acdc --input SCANS/ --output masks/': Runs(
        needs=(SHARED, 'runs/acdc', 'SCANS'), expect='masks in masks'
    ),
    'python predict.py --checkpoint runs/acdc --input ../shared/data/ACDC/dataset.json --subset validation '
    '--labels ../shared/data/ACDC/labelsTr --output runs/acdc/function': Runs(
        needs=(SHARED, 'runs/acdc'), expect='Cardiac function: '
    ),
    'python predict.py --checkpoint runs/la/best.pt --input scans/ --output masks/': Runs(
        needs=(SHARED, 'runs/la', 'scans'), expect='masks in masks'
    ),
    'python -m benchmarks.benchmark loader --data ../shared/data/LA2018 --workers 1 2 -- --target-spacing 0.625 '
    '--patch-size 144 128 80': Runs(needs=(SHARED,), stop='--steps 1 --repeats 1 --cases 2', stop_before=' -- '),
}
