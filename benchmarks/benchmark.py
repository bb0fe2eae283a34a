"""Benchmarks: training throughput, prediction speed and memory, each against MONAI.

Each subcommand lives in its own module, whose docstring says what it measures:
``train`` (``bench_training``), ``predict`` (``bench_prediction``), ``feed``
(``bench_feed``), ``loader`` (``bench_loader``), ``norm`` (``bench_norm``),
``ensemble`` (``bench_ensemble``), ``qc`` (``bench_qc``) and ``memory``
(``bench_memory``); what several share is in ``bench_common``. Each measurement
is repeated and its median reported, with MONAI's equivalent measured in the
same process, run alternately with ours, for a ratio. MONAI is a
development-only dependency (``requirements-bench.txt``).

Example:
    python -m benchmarks.benchmark train --data ../shared/data/LA2018
    python -m benchmarks.benchmark train --data ../shared/data/LA2018 -- --no-channels-last
    python -m benchmarks.benchmark feed --data ../shared/data/LA2018 --workers 4 8 15 -- --spacing 0.625
    python -m benchmarks.benchmark predict --checkpoint runs/la/best.pt --data ../shared/data/LA2018 --cases 5
    python -m benchmarks.benchmark memory --checkpoint runs/la/best.pt
    python -m benchmarks.benchmark loader --data ../shared/data/LA2018 --workers 1 2 -- --spacing 0.625 \
--patch-size 144 128 80
    python -m benchmarks.benchmark norm
    python -m benchmarks.benchmark ensemble --checkpoint runs/cv --images test/images --labels test/labels
    python -m benchmarks.benchmark qc --checkpoint runs/la/best.pt --images test/images --cases 4
"""

from __future__ import annotations

import argparse
import json
import sys

from benchmarks import (
    bench_ensemble,
    bench_feed,
    bench_loader,
    bench_memory,
    bench_norm,
    bench_prediction,
    bench_qc,
    bench_training,
)
from benchmarks.bench_common import training_setup
from heartseg.cli import DefaultsHelpFormatter, Parser
from heartseg.errors import run_cli

__all__ = ['build_parser', 'main', 'training_setup']  # training_setup: benchmarks.augmentation_reference imports it

COMMANDS = {  # each subcommand: what adds its flags, what measures; in the order --help lists them
    'train': (bench_training.add_command, bench_training.train_benchmark),
    'predict': (bench_prediction.add_command, bench_prediction.predict_benchmark),
    'feed': (bench_feed.add_command, bench_feed.feed_benchmark),
    'loader': (bench_loader.add_command, bench_loader.loader_benchmark),
    'norm': (bench_norm.add_command, bench_norm.norm_benchmark),
    'ensemble': (bench_ensemble.add_command, bench_ensemble.ensemble_benchmark),
    'qc': (bench_qc.add_command, bench_qc.qc_benchmark),
    'memory': (bench_memory.add_command, bench_memory.memory_benchmark),
}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(description=__doc__.split('\n\n')[0], formatter_class=DefaultsHelpFormatter)
    commands = parser.add_subparsers(dest='command', required=True)
    for add_command, _ in COMMANDS.values():
        add_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _, measure = COMMANDS[args.command]
    result = measure(args)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(run_cli(main))
