"""The training loop: patches → model → loss → Adam, with validation and logging.

Each epoch trains on seeded patches, validates on whole validation volumes
with sliding-window inference, logs to TensorBoard and ``metrics.csv``, and
atomically writes ``last.pt`` (and ``best.pt`` when validation Dice
improves). A run resumes at the epoch after its last checkpoint with the
same results as an uninterrupted run.

Example:
    >>> Trainer(config, train_subjects, val_subjects).fit()  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import math
import signal
import threading
import time
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchio as tio
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from heartseg import distributed
from heartseg.augmentation import augmentation
from heartseg.checkpoint import load_checkpoint, save_checkpoint
from heartseg.config import RunConfig
from heartseg.devices import mixed_precision_dtype, select_device
from heartseg.errors import UserError
from heartseg.files import atomic_write_text
from heartseg.inference import probabilities_to_labels, sliding_window_logits
from heartseg.losses import build_loss
from heartseg.metrics import dice
from heartseg.sampling import EpochSampler, PatchDataset, one_hot_foreground
from heartseg.schedule import TimeBudget, fit_epochs_to_budget, poly_lr
from mymodel import UNet3D

METRIC_COLUMNS = ('epoch', 'train_loss', 'val_loss', 'val_dice', 'lr', 'epoch_seconds', 'elapsed_seconds')
GRADIENT_CLIP_NORM = 12.0  # nnU-Net's value


class NonFiniteLossError(UserError):
    """The loss or gradient became NaN or Inf."""


@dataclass
class EpochResult:
    epoch: int
    train_loss: float
    val_loss: float
    val_dice: float
    lr: float
    epoch_seconds: float
    elapsed_seconds: float


class Trainer:
    """Owns the model, optimiser and run folder for one training run."""

    def __init__(self, config: RunConfig, train_subjects: list[tio.Subject], val_subjects: list[tio.Subject]):
        self.config = config
        self.run_dir = Path(config.run_dir)
        self.device = distributed.local_device(select_device(config.device))
        self.amp_dtype = mixed_precision_dtype(self.device) if config.amp else None
        self.amp = self.amp_dtype is not None
        if self.device.type == 'cuda':
            torch.backends.cudnn.benchmark = True  # fixed patch shapes: pick the fastest kernels once
        torch.manual_seed(config.seed)
        self.model = UNet3D(**config.model_spec()).to(self.device, memory_format=memory_format(config))
        self.forward = self._training_forward()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.loss = build_loss(config.loss)
        self.train_loss = build_loss(config.loss, across_ranks=distributed.world_size() > 1)
        self.has_validation = bool(val_subjects)
        # A K-fold run's best.pt is its final model, as in nnU-Net: choosing the epoch by the
        # cases that later score the fold would flatter the cross-validation.
        self.selects_best = self.has_validation and not config.folds
        # Each rank validates its share of the cases; the metrics are gathered over all of them.
        self.val_subjects = val_subjects[distributed.rank()::distributed.world_size()]
        steps = config.steps_per_epoch or math.ceil(len(train_subjects) / config.batch_size)
        self.patches = PatchDataset(
            train_subjects,
            config.patch_size,
            samples_per_epoch=steps * config.batch_size,
            seed=config.seed,
            foreground_probability=config.foreground_probability,
            transform=augmentation(config.augmentation),
            foreground_labels=config.foreground_labels,
            batch_size=config.batch_size,
        )
        ranks = distributed.world_size()
        self.sampler = EpochSampler(len(self.patches), config.batch_size, distributed.rank(), ranks)
        # Persistent workers start once per run, not once per epoch.
        self.loader = DataLoader(
            self.patches,
            batch_size=config.batch_size // ranks,
            sampler=self.sampler,
            num_workers=config.num_workers,
            persistent_workers=config.num_workers > 0,
            pin_memory=self.device.type == 'cuda',
        )
        self.start_epoch = 0
        self.total_epochs = config.epochs
        self.best_dice = -1.0
        self.elapsed = 0.0
        self.train_times: list[float] = []
        self.val_every = config.val_every or 1
        self.val_seconds = 0.0
        self.last_validated_epoch = 0
        self.overlay: np.ndarray | None = None

    def _training_forward(self) -> nn.Module:
        """The model as training calls it: under DDP when launched by torchrun, compiled with ``--compile``.

        BatchNorm becomes SyncBatchNorm on GPUs. PyTorch's SyncBatchNorm has no CPU
        kernel, so on CPU ranks each rank normalises its own patches (the default
        InstanceNorm never mixes patches, so it needs no syncing).
        """
        model: nn.Module = self.model
        if distributed.world_size() > 1:
            if self.device.type == 'cuda':
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            # channels_last gives the 1x1x1 head's weight ambiguous strides; DDP's warning about it is harmless.
            warnings.filterwarnings('ignore', message='Grad strides do not match bucket view strides')
            model = DistributedDataParallel(model, device_ids=[self.device] if self.device.type == 'cuda' else None)
        return torch.compile(model) if self.config.compile else model

    # -- checkpoints -------------------------------------------------------

    def resume(self) -> None:
        state = load_checkpoint(self.run_dir / 'last.pt', map_location=self.device)
        self.model.load_state_dict(state['model'])
        self.optimizer.load_state_dict(state['optimizer'])
        self.scaler.load_state_dict(state['scaler'])
        self.start_epoch = int(state['epoch'])
        self.best_dice = float(state['best_dice'])
        self.elapsed = float(state['elapsed_seconds'])
        self.train_times = [float(t) for t in state['train_times']]
        self.val_every = int(state['val_every'])
        self.val_seconds = float(state['val_seconds'])
        self.last_validated_epoch = int(state['last_validated_epoch'])
        if not self.config.time_limit:
            self.total_epochs = self.config.epochs
        else:
            self.total_epochs = int(state['total_epochs'])

    def _save(self, name: str, epoch: int) -> None:
        if not distributed.is_main():
            return
        save_checkpoint(
            self.run_dir / name,
            self.config.plan(),
            epoch=epoch,
            total_epochs=self.total_epochs,
            model=self.model.state_dict(),
            optimizer=self.optimizer.state_dict(),
            scaler=self.scaler.state_dict(),
            best_dice=self.best_dice,
            elapsed_seconds=self.elapsed,
            train_times=self.train_times,
            val_every=self.val_every,
            val_seconds=self.val_seconds,
            last_validated_epoch=self.last_validated_epoch,
        )

    # -- the loop ------------------------------------------------------------

    def fit(self) -> float:
        """Train to the configured number of epochs; return the best validation Dice."""
        writer = None
        if distributed.is_main():
            writer = SummaryWriter(self.run_dir, purge_step=self.start_epoch + 1)
            keep_metric_rows(self.run_dir / 'metrics.csv', self.start_epoch)
        # The worker-death report may fire while the writer closes, so it covers that too.
        with reporting_worker_failures():
            try:
                self._train_epochs(writer)
            finally:
                if writer is not None:
                    writer.close()
        return self.best_dice

    def _train_epochs(self, writer: SummaryWriter | None) -> None:
        epoch = self.start_epoch
        while epoch < self.total_epochs:
            started = time.perf_counter()
            result = self.run_epoch(epoch)
            epoch += 1
            # Logs first, checkpoint last: a kill in between is undone on resume.
            if writer is not None:
                self.log(result, writer)
            if self.selects_best and result.val_dice > self.best_dice:
                self.best_dice = result.val_dice
                self._save('best.pt', epoch)
            elif not self.selects_best and not math.isnan(result.val_dice):
                self.best_dice = result.val_dice
            self.elapsed += time.perf_counter() - started
            self._plan_remaining_epochs(epoch)
            if not self.selects_best and epoch >= self.total_epochs:
                self._save('best.pt', epoch)  # the final weights (written before last.pt, so a kill redoes the epoch)
            self._save('last.pt', epoch)

    def run_epoch(self, epoch: int) -> EpochResult:
        started = time.perf_counter()
        lr = poly_lr(self.config.lr, epoch, self.total_epochs)
        for group in self.optimizer.param_groups:
            group['lr'] = lr
        train_loss = self.train_one_epoch(epoch)
        distributed.average_buffers(self.model)
        self.train_times.append(time.perf_counter() - started)
        due = epoch + 1 - self.last_validated_epoch >= self.val_every or epoch + 1 == self.total_epochs
        val_loss, val_dice = float('nan'), float('nan')
        if self.has_validation and due:
            val_loss, val_dice = self.validate(epoch)
            self.val_seconds = time.perf_counter() - started - self.train_times[-1]
        if due or not self.has_validation:
            self.last_validated_epoch = epoch + 1
        seconds = time.perf_counter() - started
        return EpochResult(epoch + 1, train_loss, val_loss, val_dice, lr, seconds, self.elapsed + seconds)

    def train_one_epoch(self, epoch: int) -> float:
        self.model.train()
        self.sampler.set_epoch(epoch)
        torch.manual_seed(self.config.seed + epoch)
        losses = []
        progress = tqdm(self.loader, desc=f'Epoch {epoch + 1}/{self.total_epochs}',
                        unit='step', leave=False, disable=not distributed.is_main())
        for step, (images, targets) in enumerate(progress):
            loss = self.train_step(images, targets, epoch, step)
            if loss is not None:
                losses.append(loss)
                progress.set_postfix(loss=f'{np.mean(losses):.4f}')
        losses = distributed.gather(losses)
        return float(np.mean(losses)) if losses else float('nan')

    def train_step(self, images: torch.Tensor, targets: torch.Tensor, epoch: int, step: int) -> float | None:
        images = images.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            logits = self.forward(images)
        loss = self.train_loss(logits, targets)
        if not torch.isfinite(loss) and not self.scaler.is_enabled():
            self._fail_non_finite('loss', epoch, step)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        gradient_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), GRADIENT_CLIP_NORM)
        if not torch.isfinite(gradient_norm) and not self.scaler.is_enabled():
            self._fail_non_finite('gradient', epoch, step)
        # Under fp16 AMP the GradScaler skips a step whose gradients are not finite (and lowers its scale).
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach()) if torch.isfinite(loss) else None

    def _fail_non_finite(self, what: str, epoch: int, step: int) -> None:
        raise NonFiniteLossError(
            self.run_dir / 'last.pt',
            f'non-finite {what} at epoch {epoch + 1}, step {step + 1}; training stopped, '
            f'the last good checkpoint is kept (try a lower --lr)',
        )

    @torch.no_grad()
    def validate(self, epoch: int) -> tuple[float, float]:
        """Mean loss and mean per-case, per-class Dice over whole validation volumes."""
        self.model.eval()
        losses, dices = [], []
        self.overlay = None
        for subject in tqdm(self.val_subjects, desc='Validating', unit='case', leave=False, disable=not distributed.is_main()):
            logits = sliding_window_logits(
                self.model, subject['image'].data, self.config.patch_size,
                overlap=self.config.val_overlap, batch_size=self.config.batch_size,
                device=self.device, amp=self.amp,
            )
            target = one_hot_foreground(subject['label'].data, self.config.foreground_labels)
            losses.append(float(self.loss(logits[None], target[None])))
            prediction = probabilities_to_labels(torch.sigmoid(logits), self.config.foreground_labels)
            reference = subject['label'].data[0]
            dices += [dice((prediction == v).numpy(), (reference == v).numpy()) for v in self.config.foreground_labels]
            if self.overlay is None:
                self.overlay = overlay_image(subject['image'].data[0], reference, prediction)
        return float(np.mean(distributed.gather(losses))), float(np.mean(distributed.gather(dices)))

    def _plan_remaining_epochs(self, completed: int) -> None:
        """With a time limit, fit the schedule to the time left, so the LR still anneals to zero."""
        if not self.config.time_limit:
            return
        budget = TimeBudget(self.config.time_limit * 60, self.config.epochs, automatic_validation=self.config.val_every == 0)
        plan = fit_epochs_to_budget(budget, completed, self.elapsed, self.train_times, self.val_seconds,
                                    self.val_every, self.last_validated_epoch)
        # Rank 0's clock decides, so that all ranks run the same number of epochs.
        self.total_epochs, self.val_every = distributed.broadcast(plan)

    # -- logging -------------------------------------------------------------

    def log(self, result: EpochResult, writer: SummaryWriter) -> None:
        writer.add_scalar('loss/train', result.train_loss, result.epoch)
        writer.add_scalar('learning_rate', result.lr, result.epoch)
        if not math.isnan(result.val_dice):
            writer.add_scalar('loss/val', result.val_loss, result.epoch)
            writer.add_scalar('dice/val', result.val_dice, result.epoch)
            if self.overlay is not None and (result.epoch % self.config.image_every == 0 or result.epoch == 1):
                writer.add_image('val/image_label_prediction', self.overlay, result.epoch, dataformats='HW')
        writer.flush()
        append_metric_row(self.run_dir / 'metrics.csv', result)
        validation = f'val loss {result.val_loss:.4f}  val Dice {result.val_dice:.4f}  ' if not math.isnan(result.val_dice) else ''
        tqdm.write(
            f'epoch {result.epoch}/{self.total_epochs}  train loss {result.train_loss:.4f}  '
            f'{validation}lr {result.lr:.2e}  {result.epoch_seconds:.1f}s'
        )


@contextmanager
def reporting_worker_failures() -> Iterator[None]:
    """A loader worker that dies (killed, or out of shared memory) becomes a one-line error.

    PyTorch reports the death from a SIGCHLD handler, so it can surface anywhere in the
    main process, not only while a batch is fetched. A batch being read when the worker
    dies can fail first, on its broken connection, before that report.
    """
    hint = ('The last completed epoch is saved: resume with --resume; '
            'if workers run out of shared memory (/dev/shm), use fewer --num-workers')
    try:
        yield
    except (OSError, EOFError) as error:  # ConnectionError is an OSError
        if not _is_broken_worker_connection(error):
            raise
        _ignore_further_worker_deaths()
        raise UserError('data loader', f'DataLoader worker connection broke ({error!r}); the worker died. {hint}') from None
    except RuntimeError as error:
        if 'DataLoader worker' not in str(error):
            raise
        _ignore_further_worker_deaths()
        reason = str(error).strip().splitlines()[0]
        raise UserError('data loader', f'{reason} {hint}') from None


_LOADER_SOURCE = Path(torch.utils.data.__file__).parent.as_posix()


def _is_broken_worker_connection(error: OSError | EOFError) -> bool:
    broken = isinstance(error, (ConnectionError, EOFError)) or 'end of file during message' in str(error)
    # Only a batch fetch talks to the workers; a broken pipe elsewhere (stdout closed, say) is not theirs.
    fetching = any(_LOADER_SOURCE in Path(frame.f_code.co_filename).as_posix() for frame, _ in traceback.walk_tb(error.__traceback__))
    return broken and fetching


def _ignore_further_worker_deaths() -> None:
    # The loader is finished with; PyTorch's SIGCHLD handler would otherwise report the same
    # death a second time, as a traceback, while this one is being printed. Its later loaders
    # still notice a dead worker, through their status checks.
    if hasattr(signal, 'SIGCHLD') and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)


def memory_format(config: RunConfig) -> torch.memory_format:
    return torch.channels_last_3d if config.channels_last else torch.contiguous_format


def overlay_image(image: torch.Tensor, label: torch.Tensor, prediction: torch.Tensor) -> np.ndarray:
    """Image | label | prediction, side by side, through the label's busiest axial slice."""
    slice_index = int(label.sum(dim=(0, 1)).argmax()) if label.any() else label.shape[2] // 2
    picture = image[:, :, slice_index].float()
    picture = (picture - picture.min()) / (picture.max() - picture.min() + 1e-8)
    panels = [picture, label[:, :, slice_index].float().clamp(0, 1), prediction[:, :, slice_index].float().clamp(0, 1)]
    # Transpose and flip so anterior is up and the patient's left on the right, as viewers show RAS data.
    return torch.cat([panel.T.flip(0) for panel in panels], dim=1).numpy()


def keep_metric_rows(path: Path, completed_epochs: int) -> None:
    """Drop rows of epochs after the checkpoint, so a resumed run has no duplicates."""
    if not path.is_file():
        atomic_write_text(path, ','.join(METRIC_COLUMNS) + '\n')
        return
    with open(path, newline='') as handle:
        # A kill during an append can leave a partial last row; only complete rows are kept.
        rows = [row for row in csv.DictReader(handle) if _complete(row) and int(row['epoch']) <= completed_epochs]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, lineterminator='\n')
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def _complete(row: dict[str, str | None]) -> bool:
    return None not in row and all(row.get(column) for column in METRIC_COLUMNS) and row['epoch'].isdigit()


def append_metric_row(path: Path, result: EpochResult) -> None:
    with open(path, 'a', newline='') as handle:
        csv.DictWriter(handle, fieldnames=METRIC_COLUMNS, lineterminator='\n').writerow(vars(result))
