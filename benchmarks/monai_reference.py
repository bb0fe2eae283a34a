"""The MONAI tutorial-style reference recipe, on our split, for same-machine comparisons.

A residual UNet (16-32-64-128, 2 residual units, BatchNorm) trained at 1.25 mm
isotropic on 96x96x48 positive/negative patches (4 per step) with random
flips, DiceCE loss with softmax and Adam at 1e-3, for a fixed wall-clock
budget. It then predicts the validation cases and scores them at their
original resolution with this project's metrics. MONAI is a development-only
dependency (``requirements-bench.txt``).

Example:
    python -m benchmarks.monai_reference --data ../shared/data/LA2018 --splits runs/la/splits.json --minutes 12 \
--output runs/monai
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from heartseg.cli import Parser, integer, number, user_path
from heartseg.data.dataset import read_dataset
from heartseg.errors import run_cli
from heartseg.files import atomic_write_text
from heartseg.inference.prediction import back_to_input_grid, summarise
from heartseg.metrics import case_metrics

SPACING = (1.25, 1.25, 1.25)
PATCH = (96, 96, 48)


def transforms(training: bool):
    from monai import transforms as mt

    common = [
        mt.LoadImaged(keys=['image', 'label']),
        mt.EnsureChannelFirstd(keys=['image', 'label']),
        mt.Orientationd(keys=['image', 'label'], axcodes='RAS'),
        mt.Spacingd(keys=['image', 'label'], pixdim=SPACING, mode=('bilinear', 'nearest')),
        mt.NormalizeIntensityd(keys='image', nonzero=True),
    ]
    if not training:
        return mt.Compose(common)
    return mt.Compose(
        [
            *common,
            mt.SpatialPadd(keys=['image', 'label'], spatial_size=PATCH),
            mt.RandCropByPosNegLabeld(
                keys=['image', 'label'], label_key='label', spatial_size=PATCH, pos=1, neg=1, num_samples=4
            ),
            mt.RandFlipd(keys=['image', 'label'], prob=0.5, spatial_axis=0),
            mt.RandFlipd(keys=['image', 'label'], prob=0.5, spatial_axis=1),
            mt.RandFlipd(keys=['image', 'label'], prob=0.5, spatial_axis=2),
        ]
    )


def network() -> torch.nn.Module:
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=2,
        channels=(16, 32, 64, 128),
        strides=(2, 2, 2),
        num_res_units=2,
        norm='batch',
    )


def foreground_probability(model, image: torch.Tensor) -> torch.Tensor:
    from monai.inferers import sliding_window_inference

    with torch.no_grad():
        logits = sliding_window_inference(image[None], PATCH, 4, model, overlap=0.25)
    return torch.softmax(logits, dim=1)[0, 1:]


def train(
    args: argparse.Namespace, train_items: list[dict], val_items: list[dict]
) -> tuple[torch.nn.Module, list[dict]]:
    from monai.data import CacheDataset, DataLoader
    from monai.losses import DiceCELoss

    torch.manual_seed(args.seed)
    loader = DataLoader(CacheDataset(train_items, transforms(True), progress=False), batch_size=1, shuffle=True)
    val_data = CacheDataset(val_items, transforms(False), progress=False)
    model, loss_function = network(), DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    started, curve, best, best_state, steps = time.perf_counter(), [], -1.0, None, 0
    while time.perf_counter() - started < args.minutes * 60:
        model.train()
        for batch in loader:
            optimizer.zero_grad()
            loss_function(model(batch['image']), batch['label']).backward()
            optimizer.step()
            steps += 1
            if time.perf_counter() - started >= args.minutes * 60:
                break
        model.eval()
        dices = [
            case_metrics(
                foreground_probability(model, item['image'])[0].numpy() > 0.5, item['label'][0].numpy() > 0, SPACING
            )['dice']
            for item in val_data
        ]
        curve.append(
            {
                'minutes': round((time.perf_counter() - started) / 60, 2),
                'steps': steps,
                'val_dice': float(np.mean(dices)),
            }
        )
        print(json.dumps(curve[-1]), flush=True)
        if curve[-1]['val_dice'] > best:
            best, best_state = curve[-1]['val_dice'], {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return model.eval(), curve


def evaluate_original_resolution(model, val_items: list[dict]) -> list[dict]:
    """Predict at 1.25 mm, resample probabilities to each original grid, score there."""
    import nibabel as nib

    preprocess = transforms(False)
    rows = []
    for item in val_items:
        data = preprocess(item)
        probability = foreground_probability(model, data['image'])
        original = nib.load(item['image'])
        back = back_to_input_grid(probability, data['image'].affine.numpy(), original)[0].numpy()
        reference = np.asarray(nib.load(item['label']).dataobj) > 0
        spacing = tuple(float(z) for z in original.header.get_zooms()[:3])
        rows.append({'case': Path(item['image']).name, 'label': 1, **case_metrics(back > 0.5, reference, spacing)})
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(description=__doc__.split('\n\n')[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--data', type=user_path, required=True, help='MSD-layout dataset')
    parser.add_argument(
        '--splits', type=user_path, required=True, help="a run's splits.json, so both recipes share the split"
    )
    parser.add_argument('--minutes', type=number(0, inclusive=False), default=25, help='training wall-clock budget')
    parser.add_argument('--output', type=user_path, required=True, help='folder for curve.json and summary.json')
    parser.add_argument('--seed', type=integer(0), default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    split = json.loads(args.splits.read_text())
    cases = {case.case_id: case for case in read_dataset(args.data).cases}
    items = {
        name: [{'image': str(cases[i].image), 'label': str(cases[i].label)} for i in split[name]]
        for name in ('training', 'validation')
    }
    model, curve = train(args, items['training'], items['validation'])
    rows = evaluate_original_resolution(model, items['validation'])
    args.output.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.output / 'curve.json', json.dumps(curve, indent=1))
    atomic_write_text(
        args.output / 'summary.json', json.dumps({'per_case': rows, 'summary': summarise(rows)}, indent=1)
    )
    print(json.dumps(summarise(rows), indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(run_cli(main))
