"""The review page: every predicted case, worst first, with three orthogonal slices and its QC verdict.

``review.html`` is one self-contained file (no network, no scripts from
elsewhere) that opens offline by double-click. Its thumbnails are small PNGs in
``review/`` beside it, loaded lazily, so a page of 2,000 cases stays light.
:func:`orthogonal_views` also draws ``predict.py --png``'s larger pictures.

Example:
    >>> rows = [{'case': 'a', 'predicted_dice': 0.93, 'flag': 0, 'reasons': '', 'volume_ml': 52.0, 'status': 'ok'}]
    >>> '"case": "a"' in review_html(rows)
    True
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from heartseg.files import atomic_write, atomic_write_text

THUMBNAIL_HEIGHT = 96
PREDICTION_COLOUR = (255, 64, 64)
REFERENCE_COLOUR = (64, 224, 64)
# Every 11th voxel: the display window's percentiles, at a fraction of the cost of all voxels.
WINDOW_STRIDE = 11


def orthogonal_views(
    image: nib.Nifti1Image, mask: np.ndarray, reference: np.ndarray | None = None, height: int = THUMBNAIL_HEIGHT
) -> np.ndarray:
    """Axial, coronal and sagittal slices through the mask's centre, side by side, as RGB ``(height, W, 3)``.

    The mask's contour is red and the reference's, if given, green. Each view is
    drawn in millimetres (square pixels), radiological axes canonicalised to RAS.
    """
    canonical = nib.as_closest_canonical(image)
    orientation = nib.orientations.io_orientation(image.affine)

    def to_canonical(volume: np.ndarray) -> np.ndarray:
        return nib.orientations.apply_orientation(volume, orientation)

    volume = np.asarray(canonical.dataobj, dtype=np.float32)
    volume = volume[..., 0] if volume.ndim == 4 else volume
    masks = [to_canonical(mask) > 0] + ([to_canonical(reference) > 0] if reference is not None else [])
    centre = _centre(masks, volume.shape)
    spacing = nib.affines.voxel_sizes(canonical.affine)
    low, high = np.percentile(volume.ravel()[::WINDOW_STRIDE], (0.5, 99.5))
    views = []
    for slice_axis in (2, 1, 0):  # axial, coronal, sagittal
        index = [slice(None)] * 3
        index[slice_axis] = int(np.clip(round(centre[slice_axis]), 0, volume.shape[slice_axis] - 1))
        in_plane = [a for a in range(3) if a != slice_axis]
        picture = _square_pixels(volume[tuple(index)], spacing[in_plane], height)
        rgb = np.repeat(
            (255 * np.clip((picture - low) / max(high - low, 1e-6), 0, 1)).astype(np.uint8)[..., None], 3, axis=2
        )
        for one_mask, colour in zip(masks, (PREDICTION_COLOUR, REFERENCE_COLOUR)):
            outline = _square_pixels(one_mask[tuple(index)].astype(np.float32), spacing[in_plane], height) > 0.5
            rgb[outline & ~ndimage.binary_erosion(outline)] = colour
        views.append(rgb)
    gap = np.zeros((height, 2, 3), np.uint8)
    return np.concatenate([part for view in views for part in (view, gap)][:-1], axis=1)


def _centre(masks: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    for one in masks:
        if one.any():
            return np.array(ndimage.center_of_mass(one))
    return np.array(shape) / 2


def _square_pixels(plane: np.ndarray, spacing: np.ndarray, height: int) -> np.ndarray:
    """A slice ``(first, second)`` shown with the second axis up and square millimetres, ``height`` pixels tall."""
    picture = plane.T[::-1]  # rows: the second axis, highest first (superior or anterior up)
    millimetres = np.array(picture.shape) * np.array([spacing[1], spacing[0]])
    width = max(1, int(round(height * millimetres[1] / millimetres[0])))
    rows = np.minimum((np.arange(height) + 0.5) * picture.shape[0] / height, picture.shape[0] - 1).astype(int)
    columns = np.minimum((np.arange(width) + 0.5) * picture.shape[1] / width, picture.shape[1] - 1).astype(int)
    return picture[np.ix_(rows, columns)]


def save_png(rgb: np.ndarray, path: Path) -> None:
    import matplotlib.image

    atomic_write(path, lambda temporary: matplotlib.image.imsave(temporary, rgb, format='png'))


COLUMNS = (
    ('case', 'Case'),
    ('predicted_dice', 'Predicted Dice'),
    ('true_dice', 'True Dice'),
    ('flag', 'Flag'),
    ('volume_ml', 'Volume (mL)'),
    ('reasons', 'Reasons'),
    # The patient's cardiac function (function.csv), beside each of its phases' masks.
    ('LVEF_pct', 'LV EF (%)'),
    ('RVEF_pct', 'RV EF (%)'),
    ('LVM_g', 'LV mass (g)'),
    ('function_reasons', 'Function flags'),
)


def review_html(rows: list[dict]) -> str:
    """The page for ``rows`` (qc.csv's, plus ``thumbnail`` paths): worst predicted Dice first, every column sortable."""
    columns = [(key, title) for key, title in COLUMNS if any(key in row for row in rows)]
    plain = [
        {key: None if isinstance(value, float) and not math.isfinite(value) else value for key, value in row.items()}
        for row in rows
    ]
    data = json.dumps({'columns': columns, 'rows': plain}, allow_nan=False, default=str)
    flagged = sum(int(row.get('flag', 0)) for row in rows)
    return PAGE.format(
        count=len(rows),
        flagged=flagged,
        data=data.replace('</', '<\\/'),
        headers=''.join(f'<th data-key="{html.escape(key)}">{html.escape(title)}</th>' for key, title in columns),
    )


def write_review_page(rows: list[dict], output: Path) -> Path:
    path = output / 'review.html'
    atomic_write_text(path, review_html(rows))
    return path


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Review: {flagged} of {count} masks flagged</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 1em; }}
table {{ border-collapse: collapse; }}
th, td {{ padding: 4px 8px; border-bottom: 1px solid #ddd; text-align: left; vertical-align: middle; }}
th {{ cursor: pointer; background: #f3f3f3; position: sticky; top: 0; }}
th.sorted-up::after {{ content: " \\25B2"; }} th.sorted-down::after {{ content: " \\25BC"; }}
tr.flagged {{ background: #fde8e8; }} tr.failed {{ background: #f8d0d0; }}
tr.flagged td.flag {{ color: #b00; font-weight: bold; }}
img {{ height: 96px; image-rendering: pixelated; display: block; }}
</style></head>
<body>
<h1>{flagged} of {count} masks flagged for review</h1>
<p>Worst predicted Dice first. Click a column to sort by it. Contours: <span style="color:#e33">prediction</span>,
<span style="color:#2b2">reference</span> (when labels were given). \
Slices: axial, coronal, sagittal, through the mask's centre.</p>
<table><thead><tr><th data-key="thumbnail">Slices</th>{headers}</tr></thead><tbody id="cases"></tbody></table>
<script type="application/json" id="data">{data}</script>
<script>
"use strict";
const data = JSON.parse(document.getElementById("data").textContent);
const body = document.getElementById("cases");
let sortKey = "predicted_dice", ascending = true;
function value(row, key) {{
  const v = row[key];
  return (v === undefined || v === null || v === "") ? null : v;
}}
function compare(a, b) {{
  const x = value(a, sortKey), y = value(b, sortKey);
  if (x === y) return 0;
  if (x === null) return -1;  // failed cases, with no estimate, come first
  if (y === null) return 1;
  const order = (typeof x === "number" && typeof y === "number") ? x - y : String(x).localeCompare(String(y));
  return ascending ? order : -order;
}}
function cell(row, text, className) {{
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  row.appendChild(td);
}}
function render() {{
  body.replaceChildren();
  for (const row of [...data.rows].sort(compare)) {{
    const tr = document.createElement("tr");
    tr.className = row.status === "failed" ? "flagged failed" : (Number(row.flag) ? "flagged" : "");
    tr.dataset.case = row.case;
    const picture = document.createElement("td");
    if (row.thumbnail) {{
      const img = document.createElement("img");
      img.loading = "lazy"; img.src = row.thumbnail; img.alt = row.case;
      picture.appendChild(img);
    }}
    tr.appendChild(picture);
    for (const [key] of data.columns) {{
      const v = value(row, key);
      const text = v === null ? "" : (key === "flag" ? (Number(v) ? "review" : "") : \
(typeof v === "number" ? v.toFixed(key === "volume_ml" ? 1 : 3) : v));
      cell(tr, text, key);
    }}
    body.appendChild(tr);
  }}
  for (const th of document.querySelectorAll("th")) {{
    th.classList.toggle("sorted-up", th.dataset.key === sortKey && ascending);
    th.classList.toggle("sorted-down", th.dataset.key === sortKey && !ascending);
  }}
}}
for (const th of document.querySelectorAll("th[data-key]")) {{
  if (th.dataset.key === "thumbnail") continue;
  th.addEventListener("click", () => {{
    ascending = th.dataset.key === sortKey ? !ascending : true;
    sortKey = th.dataset.key;
    render();
  }});
}}
render();
// review.html#sort=volume_ml clicks that column once (twice for #sort=-volume_ml): a link can open the page sorted.
const wanted = /^#sort=(-?)(.+)$/.exec(decodeURIComponent(location.hash));
if (wanted) {{
  const th = document.querySelector(`th[data-key="${{wanted[2]}}"]`);
  if (th) {{
    if (th.dataset.key !== sortKey) th.click();
    if (wanted[1]) th.click();
  }}
}}
</script>
</body></html>
"""
