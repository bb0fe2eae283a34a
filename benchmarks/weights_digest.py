"""The SHA-256 of a checkpoint's weights: every tensor of its ``model`` in name order, bytes as stored.

Two runs that gave the same digest trained the same weights bit for bit, so a refactor that claims to
change no behaviour is checked by the same seeded run before and after (BENCHMARKS.md, "Behaviour
unchanged by the code layout").

Example:
    python main.py --run-dir RUN --epochs 2 --steps-per-epoch 4 --seed 3
    python -m benchmarks.weights_digest RUN/last.pt
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from heartseg.checkpoint import load_checkpoint
from heartseg.cli import Parser, user_path
from heartseg.errors import run_cli


def weights_digest(checkpoint: Path) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(load_checkpoint(checkpoint)['model'].items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().flatten().numpy().tobytes())
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = Parser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('checkpoints', type=user_path, nargs='+', help='last.pt or best.pt files')
    for checkpoint in parser.parse_args(argv).checkpoints:
        print(f'{weights_digest(checkpoint)}  {checkpoint}')
    return 0


if __name__ == '__main__':
    sys.exit(run_cli(main))
