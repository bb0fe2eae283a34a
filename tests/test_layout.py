"""The package's layout holds: imports go one way between stages, entry points stay thin, modules stay short.

docs/explanation/modules.md draws the stages; this is the order it draws them in.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / 'heartseg'
# Lowest first: a stage may import the stages before it and the shared leaves (heartseg/*.py), never one after it.
STAGES = ('data', 'preprocessing', 'planning', 'quality', 'inference', 'training', 'run', 'analysis', 'commands')
ENTRY_POINTS = ('main.py', 'predict.py', 'analyze_data.py', 'export.py')
MAX_ENTRY_POINT_LINES = 80
MAX_MODULE_LINES = 400


def stage_of(module: str) -> int:
    """The rank of ``heartseg.<stage>.<module>`` (a shared leaf ``heartseg.<module>`` is -1)."""
    parts = module.split('.')
    return STAGES.index(parts[1]) if len(parts) > 2 and parts[1] in STAGES else -1


def heartseg_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith('heartseg'):
            base = node.module
            found |= {
                f'{base}.{alias.name}' if base.count('.') < 2 and base != 'heartseg' else base for alias in node.names
            }
            if base == 'heartseg':
                found |= {f'heartseg.{alias.name}' for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith('heartseg')}
    return found


def package_modules() -> list[Path]:
    return sorted(PACKAGE.rglob('*.py'))


def test_stages_import_only_earlier_stages_and_leaves():
    upward = []
    for path in package_modules():
        module = '.'.join(path.relative_to(REPO).with_suffix('').parts)
        own = stage_of(module)
        for imported in heartseg_imports(path):
            if stage_of(imported) > own:
                upward.append(f'{module} imports {imported}')
    assert not upward, 'imports against the stage order ' + ' > '.join(STAGES) + ':\n' + '\n'.join(upward)


def test_shared_leaves_import_no_stage():
    leaves = [path for path in PACKAGE.glob('*.py') if path.name != '__init__.py']
    staged = [
        f'{path.name} imports {imported}'
        for path in leaves
        for imported in heartseg_imports(path)
        if stage_of(imported) >= 0
    ]
    assert not staged, '\n'.join(staged)


@pytest.mark.parametrize('script', ENTRY_POINTS)
def test_entry_points_parse_and_call_one_function(script):
    lines = len((REPO / script).read_text().splitlines())
    assert lines <= MAX_ENTRY_POINT_LINES, f'{script} has {lines} lines; its work belongs in heartseg.commands'


def test_no_module_is_longer_than_the_limit():
    paths = [*package_modules(), *REPO.glob('*.py'), *(REPO / 'benchmarks').glob('*.py')]
    long = [
        f'{path.relative_to(REPO)}: {n}'
        for path in paths
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    assert not long, f'modules over {MAX_MODULE_LINES} lines (split them by concept):\n' + '\n'.join(long)


def test_every_stage_says_what_it_takes_and_gives():
    for stage in STAGES:
        init = PACKAGE / stage / '__init__.py'
        assert init.is_file() and 'Takes' in (ast.get_docstring(ast.parse(init.read_text())) or ''), stage


def test_no_test_folder_shadows_a_top_level_module():
    """The helper scripts run from tests/ (ddp_worker.py, kill_driver.py) import main and training: a tests/ folder
    of that name would be imported instead, as a namespace package."""
    modules = {path.stem for path in REPO.glob('*.py')}
    shadowing = sorted(
        folder.name for folder in (REPO / 'tests').iterdir() if folder.is_dir() and folder.name in modules
    )
    assert not shadowing, f'tests/ folders named like top-level modules: {shadowing}'
