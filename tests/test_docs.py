"""The manual stays true to the code: the generated flag reference is current, and every link resolves."""

from __future__ import annotations

import importlib.util
import re
import unicodedata
from pathlib import Path

import documented_commands
import pytest

REPO = Path(__file__).resolve().parents[1]
# docs/ is no package: load the generator from its file.
_spec = importlib.util.spec_from_file_location('generate_flags', REPO / 'docs' / 'generate_flags.py')
generate_flags = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(generate_flags)

LINK = re.compile(r'(?<!!)\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)')
IMAGE = re.compile(r'!\[[^\]]*\]\(\s*<?([^)\s>]+)>?\s*\)')
FENCE = re.compile(r'^(```|~~~)')
HEADING = re.compile(r'^(#{1,6})\s+(.*?)\s*#*\s*$')


def manual_pages() -> list[Path]:
    return [REPO / 'README.md', *sorted((REPO / 'docs').rglob('*.md'))]


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks, with inline code spans blanked."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(re.sub(r'`[^`]*`', '``', line))
    return lines


def github_anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, spaces to '-', punctuation other than '-' and '_' dropped.

    >>> github_anchor('Cine MRI on real ACDC (issue 34, 2026-12-06)')
    'cine-mri-on-real-acdc-issue-34-2026-12-06'
    >>> github_anchor('`main.py` flags: 64×64×48')
    'mainpy-flags-646448'
    """
    text = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', heading)  # a link's text stays, its target goes
    kept = ''.join(
        ch
        for ch in text.lower()
        if ch in ' -' or unicodedata.category(ch)[0] in 'LMN' or unicodedata.category(ch) == 'Pc'
    )
    return kept.replace(' ', '-')


def anchors(page: Path) -> set[str]:
    """Every heading anchor of a Markdown page, with GitHub's -1, -2 suffixes for repeated headings."""
    found: set[str] = set()
    counts: dict[str, int] = {}
    for line in prose_lines(page.read_text(encoding='utf-8')):
        match = HEADING.match(line)
        if not match:
            continue
        base = github_anchor(match.group(2))
        count = counts.get(base, 0)
        counts[base] = count + 1
        found.add(base if count == 0 else f'{base}-{count}')
    return found


def links(page: Path) -> list[str]:
    text = '\n'.join(prose_lines(page.read_text(encoding='utf-8')))
    return LINK.findall(text) + IMAGE.findall(text)


def relative_links() -> list[tuple[Path, str]]:
    return [
        (page, target)
        for page in manual_pages()
        for target in links(page)
        if not re.match(r'^[a-z][a-z0-9+.-]*:', target, re.IGNORECASE)
    ]  # http:, https:, mailto: ...


def test_flag_reference_is_generated_from_the_parsers():
    committed = generate_flags.OUTPUT.read_text(encoding='utf-8') if generate_flags.OUTPUT.is_file() else ''
    made_with = re.search(r'with Python (\d+\.\d+)', committed)
    if made_with and made_with.group(1) != generate_flags.PYTHON:
        pytest.skip(
            f'docs/reference/flags.md was generated with Python {made_with.group(1)}, whose argparse lays help out '
            f'differently from this Python {generate_flags.PYTHON}'
        )
    assert committed == generate_flags.render(), (
        'docs/reference/flags.md is out of date: run python docs/generate_flags.py'
    )


def test_manual_pages_exist():
    assert (REPO / 'docs' / 'reference' / 'flags.md').is_file(), 'run python docs/generate_flags.py'
    assert len(manual_pages()) > 2


def test_relative_links_point_at_existing_files():
    broken = []
    for page, target in relative_links():
        path = target.split('#', 1)[0]
        if path and not (page.parent / path).exists():
            broken.append(f'{page.relative_to(REPO)}: {target}')
    assert not broken, 'links to missing files:\n' + '\n'.join(broken)


def test_anchors_match_headings():
    """Every #anchor, within a page or into another Markdown file (BENCHMARKS.md above all), names a heading there."""
    broken = []
    for page, target in relative_links():
        if '#' not in target:
            continue
        path, anchor = target.split('#', 1)
        linked = (page.parent / path) if path else page
        if linked.suffix == '.md' and linked.is_file() and anchor not in anchors(linked):
            broken.append(f'{page.relative_to(REPO)}: {target}')
    assert not broken, 'anchors that match no heading:\n' + '\n'.join(broken)


def test_benchmark_links_are_checked():
    """The README's numbers link to BENCHMARKS.md tables, so the anchor test above has something to check."""
    assert any(target.startswith('BENCHMARKS.md#') for page, target in relative_links() if page.name == 'README.md')


def test_every_documented_command_is_run_or_says_why_not():
    """Each step of the manual's ```bash blocks is in documented_commands.COMMANDS: run as written by
    tests/test_documented_commands.py, run by .ci/run, or not runnable here, with the reason."""
    documented = {
        step: page for page in documented_commands.manual_pages() for step in documented_commands.documented_steps(page)
    }
    untested = [
        f'{page.relative_to(REPO)}: {step}'
        for step, page in documented.items()
        if step not in documented_commands.COMMANDS
    ]
    assert not untested, 'documented commands with no test (add each to tests/documented_commands.py):\n' + '\n'.join(
        untested
    )
    stale = [step for step in documented_commands.COMMANDS if step not in documented]
    assert not stale, 'tests/documented_commands.py lists commands the manual no longer gives:\n' + '\n'.join(stale)


def test_a_documented_command_is_shortened_only_by_its_stop_flags():
    for step, spec in documented_commands.COMMANDS.items():
        if isinstance(spec, documented_commands.Runs):
            run = spec.shell_text(step).split('\n')[-1]
            assert run.replace(f' {spec.stop}', '', 1) == step if spec.stop else run == step, step
