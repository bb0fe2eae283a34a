"""Reading ``dataset.json``: the one entry point that tells the two layouts apart.

Example::

    spec = read_dataset(Path('data/Task02_Heart'))
"""

from __future__ import annotations

import json
from pathlib import Path

from heartseg.data.cases import DatasetSpec
from heartseg.data.msd import read_msd
from heartseg.data.nnunet_v2 import read_nnunet_v2
from heartseg.errors import UserError


def read_dataset(root: Path, allow_duplicates: bool = False) -> DatasetSpec:
    """Read and check ``root/dataset.json`` (MSD or nnU-Net v2 layout) without opening any image.

    Args:
        allow_duplicates: Keep a case listed twice instead of raising, so
            ``analyze_data.py`` can report it among the other problems.

    Raises:
        UserError: The file is missing or invalid JSON, a key is missing or
            invalid, a case is listed twice, or a path is absolute or escapes ``root``.
    """
    root = root.expanduser()
    json_path = root / 'dataset.json'
    if not json_path.is_file():
        raise UserError(
            json_path,
            'dataset.json not found; '
            'expected an MSD folder (dataset.json, imagesTr/, labelsTr/) or an nnU-Net v2 raw folder',
        )
    try:
        content = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(json_path, f'invalid JSON: {error}') from None
    if not isinstance(content, dict):
        raise UserError(json_path, 'top level must be a JSON object')
    if 'channel_names' in content or 'file_ending' in content:
        return read_nnunet_v2(root, json_path, content)
    return read_msd(root, json_path, content, allow_duplicates)
