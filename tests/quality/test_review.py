"""review.html in a real headless browser (Chromium from the system packages, installed by .ci/run)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from heartseg.quality.review import orthogonal_views, save_png, write_review_page

CHROMIUM = next(
    (shutil.which(name) for name in ('chromium', 'chromium-browser', 'google-chrome') if shutil.which(name)), None
)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason='Chromium not installed (.ci/run installs it with apt-get)'
)


def rendered(page: Path, fragment: str = '') -> tuple[str, str]:
    """The page's DOM after its scripts ran, and Chromium's log of console messages."""
    result = subprocess.run(
        [
            CHROMIUM,
            '--headless',
            '--no-sandbox',
            '--disable-gpu',
            '--enable-logging=stderr',
            '--v=0',
            '--virtual-time-budget=3000',
            '--dump-dom',
            page.as_uri() + fragment,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout, result.stderr


def cases_in_order(dom: str) -> list[str]:
    return re.findall(r'<tr class="[^"]*" data-case="([^"]+)"', dom)


def sample_rows(tmp_path: Path, count: int) -> list[dict]:
    rng = np.random.default_rng(0)
    image = nib.Nifti1Image(rng.normal(size=(24, 20, 12)).astype(np.float32), np.diag([1.0, 1.0, 2.0, 1.0]))
    mask = np.zeros(image.shape, np.uint8)
    mask[8:16, 6:14, 3:9] = 1
    save_png(orthogonal_views(image, mask, mask), tmp_path / 'review' / 'thumbnail.png')
    rows = [
        {
            'case': f'case_{i:04d}',
            'predicted_dice': round(float(d), 4),
            'flag': int(d < 0.85),
            'reasons': 'TTA agreement 0.70' if d < 0.85 else '',
            'volume_ml': float(v),
            'status': 'ok',
            'thumbnail': 'review/thumbnail.png',
        }
        for i, (d, v) in enumerate(zip(rng.uniform(0.5, 1.0, count), rng.uniform(20, 90, count)))
    ]
    rows.append(
        {
            'case': 'broken<&>',
            'predicted_dice': '',
            'flag': 1,
            'reasons': 'prediction failed: broken.nii.gz: not a NIfTI file',
            'status': 'failed',
        }
    )
    return rows


def test_thumbnails_show_each_view_in_square_millimetres():
    image = nib.Nifti1Image(np.zeros((40, 20, 10), np.float32), np.diag([1.0, 1.0, 4.0, 1.0]))
    views = orthogonal_views(image, np.zeros(image.shape, np.uint8), height=40)
    # axial 40x20 mm, coronal 40x40 mm, sagittal 20x40 mm, at 40 px tall, with 2 px gaps
    assert views.shape == (40, 80 + 2 + 40 + 2 + 20, 3)


def test_contours_are_drawn_in_the_prediction_s_and_the_reference_s_colours():
    image = nib.Nifti1Image(np.zeros((30, 30, 30), np.float32), np.eye(4))
    prediction, reference = np.zeros((30, 30, 30), np.uint8), np.zeros((30, 30, 30), np.uint8)
    prediction[5:15, 5:15, 5:15] = 1
    reference[8:20, 8:20, 8:20] = 1
    pixels = {tuple(p) for p in orthogonal_views(image, prediction, reference).reshape(-1, 3)}
    assert (255, 64, 64) in pixels and (64, 224, 64) in pixels


@needs_chromium
def test_the_page_renders_every_case_worst_first_without_console_messages(tmp_path):
    rows = sample_rows(tmp_path, 300)
    page = write_review_page(rows, tmp_path)
    dom, log = rendered(page)
    assert 'CONSOLE' not in log, [line for line in log.splitlines() if 'CONSOLE' in line]
    order = cases_in_order(dom)
    assert len(order) == len(rows)
    assert order[0] == 'broken&lt;&amp;&gt;', 'a failed case, with no estimate, comes first and its name is escaped'
    estimates = {row['case']: row['predicted_dice'] for row in rows[:-1]}
    shown = [estimates[case] for case in order[1:]]
    assert shown == sorted(shown)
    flagged = dom.count('<tr class="flagged')
    assert flagged == sum(row['flag'] for row in rows)


@needs_chromium
def test_clicking_a_column_sorts_by_it(tmp_path):
    rows = sample_rows(tmp_path, 50)
    page = write_review_page(rows, tmp_path)
    volumes = {row['case']: row.get('volume_ml') for row in rows}
    for fragment, descending in (('#sort=volume_ml', False), ('#sort=-volume_ml', True)):
        dom, log = rendered(page, fragment)
        assert 'CONSOLE' not in log
        shown = [volumes[case] for case in cases_in_order(dom) if volumes.get(case) is not None]
        assert len(shown) == 50 and shown == sorted(shown, reverse=descending), fragment
