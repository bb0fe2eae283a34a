"""The training loop: patches → model → loss → Adam, with validation and logging.

Each epoch trains on seeded patches, validates on whole validation volumes
with sliding-window inference, logs to TensorBoard and ``metrics.csv``, and
atomically writes ``last.pt`` (and ``best.pt`` when validation Dice
improves). A run resumes at the epoch after its last checkpoint with the
same results as an uninterrupted run.

Example:
    >>> create_trainer(config, train_subjects, val_subjects).fit()  # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torchio as tio
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from heartseg import distributed
from heartseg.checkpoint import load_checkpoint, save_checkpoint
from heartseg.devices import mixed_precision_dtype, select_device
from heartseg.errors import UserError
from heartseg.inference.sliding_window import sliding_window_logits
from heartseg.metrics import dice
from heartseg.planning.config import RunConfig
from heartseg.quality.overlay import overlay_image
from heartseg.quality.qc import summarise_training_cases
from heartseg.training.loader_failures import reporting_worker_failures
from heartseg.training.recipe import PatchLoader, Recipe, build_patch_loader, build_recipe
from heartseg.training.run_log import EpochResult, append_metric_row, keep_metric_rows
from heartseg.training.schedule import ScheduleState, TimeBudget, fit_epochs_to_budget


class NonFiniteLossError(UserError):
    """The loss or gradient became NaN or Inf."""


class Trainer:
    """Runs one training run: the recipe's network, loss and optimiser over the patches, into the run folder.

    Build it with :func:`create_trainer`, which turns the config into the parts.
    """

    def __init__(
        self,
        config: RunConfig,
        recipe: Recipe,
        patches: PatchLoader,
        val_subjects: list[tio.Subject],
        device: torch.device,
        training_cases: dict | None = None,
    ):
        self.config = config
        self.training_cases = training_cases or {}  # saved in every checkpoint, for predict.py's quality control
        self.run_dir = Path(config.run_dir)
        self.device = device
        self.amp_dtype = mixed_precision_dtype(self.device) if config.amp else None
        self.amp = self.amp_dtype is not None
        if self.device.type == 'cuda':
            torch.backends.cudnn.benchmark = True  # fixed patch shapes: pick the fastest kernels once
        self.recipe = recipe
        self.model = recipe.network
        self.averaged = recipe.averaged
        # What validation scores and the checkpoints give predict.py: the weight average, if there is one.
        self.final_network = self.model if self.averaged is None else self.averaged.module
        self.optimizer = recipe.optimizer
        self.forward = self._training_forward()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.loader, self.sampler = patches.loader, patches.sampler
        self.has_validation = bool(val_subjects)
        # A K-fold run's best.pt is its final model, as in nnU-Net: choosing the epoch by the
        # cases that later score the fold would flatter the cross-validation.
        self.selects_best = self.has_validation and not config.folds
        # Each rank validates its share of the cases; the metrics are gathered over all of them.
        self.val_subjects = val_subjects[distributed.rank() :: distributed.world_size()]
        self.schedule = ScheduleState(total_epochs=config.epochs, val_every=config.val_every or 1)
        self.start_epoch = 0  # this process's first epoch: after the checkpoint's, when resumed
        self.overlay: np.ndarray | None = None
        self.last_image_epoch: int | None = None  # the first validation of a process logs one

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
        if self.averaged is not None:
            self.averaged.module.load_state_dict(state['model'])
            self.averaged.n_averaged.fill_(state['averaged_steps'])
        self.model.load_state_dict(state['trained_model'] if self.averaged is not None else state['model'])
        self.optimizer.load_state_dict(state['optimizer'])
        self.scaler.load_state_dict(state['scaler'])
        self.schedule.load_state_dict(state)
        self.start_epoch = self.schedule.epoch
        # Planned again from the time spent: a resume may give a longer or shorter --time-limit, or none.
        self._refit_remaining_epochs()

    def _save(self, name: str) -> None:
        if not distributed.is_main():
            return
        save_checkpoint(
            self.run_dir / name,
            self.config.model_plan(self.training_cases),
            model=self.final_network.state_dict(),
            optimizer=self.optimizer.state_dict(),
            scaler=self.scaler.state_dict(),
            **self.schedule.state_dict(),
            **self._averaging_state(),
        )

    def _averaging_state(self) -> dict:
        """With a weight average, the trained weights and the steps averaged, which a resume continues from."""
        if self.averaged is None:
            return {}
        return {'trained_model': self.model.state_dict(), 'averaged_steps': int(self.averaged.n_averaged)}

    # -- the loop ------------------------------------------------------------

    def fit(self) -> float:
        """Train to the configured number of epochs; return the best validation Dice (a K-fold run's: the final one)."""
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
        return self.schedule.best_dice

    def _train_epochs(self, writer: SummaryWriter | None) -> None:
        schedule = self.schedule
        while schedule.epoch < schedule.total_epochs:
            started = time.perf_counter()
            result = self.run_epoch(schedule.epoch)
            schedule.epoch += 1
            # Logs first, checkpoint last: a kill in between is undone on resume.
            if writer is not None:
                self.log(result, writer)
            if self.selects_best and result.val_dice > schedule.best_dice:
                schedule.best_dice = result.val_dice
                self._save('best.pt')
            elif not self.selects_best and not math.isnan(result.val_dice):
                schedule.best_dice = result.val_dice
            schedule.elapsed_seconds += time.perf_counter() - started
            self._refit_remaining_epochs()
            if not self.selects_best and schedule.epoch >= schedule.total_epochs:
                self._save('best.pt')  # the final weights (written before last.pt, so a kill redoes the epoch)
            self._save('last.pt')

    def run_epoch(self, epoch: int) -> EpochResult:
        started = time.perf_counter()
        schedule = self.schedule
        lr = self.recipe.learning_rate(epoch, schedule.total_epochs)
        for group in self.optimizer.param_groups:
            group['lr'] = lr
        train_loss = self.train_one_epoch(epoch)
        distributed.average_buffers(self.model)
        schedule.train_times.append(time.perf_counter() - started)
        due = epoch + 1 - schedule.last_validated_epoch >= schedule.val_every or epoch + 1 == schedule.total_epochs
        val_loss, val_dice = float('nan'), float('nan')
        if self.has_validation and due:
            val_loss, val_dice = self.validate(epoch)
            schedule.val_seconds = time.perf_counter() - started - schedule.train_times[-1]
        if due or not self.has_validation:
            schedule.last_validated_epoch = epoch + 1
        seconds = time.perf_counter() - started
        return EpochResult(epoch + 1, train_loss, val_loss, val_dice, lr, seconds, schedule.elapsed_seconds + seconds)

    def train_one_epoch(self, epoch: int) -> float:
        self.model.train()
        self.sampler.set_epoch(epoch)
        torch.manual_seed(self.config.seed + epoch)
        losses = []
        progress = tqdm(
            self.loader,
            desc=f'Epoch {epoch + 1}/{self.schedule.total_epochs}',
            unit='step',
            leave=False,
            disable=not distributed.is_main(),
        )
        for step, (images, targets, augmentation) in enumerate(progress):
            images, targets = self.augment_on_device(images, targets, augmentation)
            loss = self.train_step(images, targets, epoch, step)
            if loss is not None:
                losses.append(loss)
                progress.set_postfix(loss=f'{np.mean(losses):.4f}')
        losses = distributed.gather(losses)
        return float(np.mean(losses)) if losses else float('nan')

    def augment_on_device(
        self, images: torch.Tensor, targets: torch.Tensor, parameters: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """With ``--augment-on device``, the batch moved to the training device and its intensities augmented there."""
        augmentation = self.recipe.augmentation
        if augmentation is None or not augmentation.on_device or not parameters:
            return images, targets
        images = images.to(self.device, non_blocking=True)
        return augmentation.apply_intensity(images, parameters), targets

    def train_step(self, images: torch.Tensor, targets: torch.Tensor, epoch: int, step: int) -> float | None:
        images = images.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            logits = self.forward(images)
        loss = self.recipe.training_loss(logits, targets)
        if not torch.isfinite(loss) and not self.scaler.is_enabled():
            self._fail_non_finite('loss', epoch, step)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        gradient_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.recipe.gradient_clip_norm)
        if not torch.isfinite(gradient_norm) and not self.scaler.is_enabled():
            self._fail_non_finite('gradient', epoch, step)
        # Under fp16 AMP the GradScaler skips a step whose gradients are not finite (and lowers its scale).
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.averaged is not None:
            self.averaged.update_parameters(self.model)
        return float(loss.detach()) if torch.isfinite(loss) else None

    def _fail_non_finite(self, what: str, epoch: int, step: int) -> None:
        kept = 'the last good checkpoint is kept' if epoch > 0 else 'no epoch completed, so there is no checkpoint'
        raise NonFiniteLossError(
            self.run_dir / 'last.pt' if epoch > 0 else self.run_dir,
            f'non-finite {what} at epoch {epoch + 1}, step {step + 1}; training stopped, {kept} (try a lower --lr)',
        )

    @torch.no_grad()
    def validate(self, epoch: int) -> tuple[float, float]:
        """Mean loss and mean per-case, per-class Dice over whole validation volumes."""
        self.final_network.eval()
        losses, dices = [], []
        self.overlay = None
        outputs = self.config.outputs
        for subject in tqdm(
            self.val_subjects, desc='Validating', unit='case', leave=False, disable=not distributed.is_main()
        ):
            logits = sliding_window_logits(
                self.final_network,
                subject['image'].data,
                self.config.patch_size,
                overlap=self.config.val_overlap,
                batch_size=self.config.batch_size,
                device=self.device,
                amp_dtype=self.amp_dtype,
            )
            losses.append(float(self.recipe.loss(logits[None], outputs.target(subject['label'].data)[None])))
            prediction = outputs.label_map(outputs.probabilities(logits))
            reference = subject['label'].data[0]
            pairs = zip(outputs.structure_masks(prediction), outputs.structure_masks(reference))
            dices += [dice(predicted.numpy(), expected.numpy()) for predicted, expected in pairs]
            if self.overlay is None:
                self.overlay = overlay_image(subject['image'].data[0], reference, prediction, outputs.paint_values)
        return float(np.mean(distributed.gather(losses))), float(np.mean(distributed.gather(dices)))

    def _refit_remaining_epochs(self) -> None:
        """With a time limit, fit the schedule to the time left, so the LR still anneals to zero."""
        schedule = self.schedule
        if not self.config.time_limit:
            schedule.total_epochs = self.config.epochs
            return
        budget = TimeBudget(
            self.config.time_limit * 60, self.config.epochs, automatic_validation=self.config.val_every == 0
        )
        plan = fit_epochs_to_budget(
            budget,
            schedule.epoch,
            schedule.elapsed_seconds,
            schedule.train_times,
            schedule.val_seconds,
            schedule.val_every,
            schedule.last_validated_epoch,
        )
        # Rank 0's clock decides, so that all ranks run the same number of epochs.
        schedule.total_epochs, schedule.val_every = distributed.broadcast(plan)

    # -- logging -------------------------------------------------------------

    def log(self, result: EpochResult, writer: SummaryWriter) -> None:
        writer.add_scalar('loss/train', result.train_loss, result.epoch)
        writer.add_scalar('learning_rate', result.lr, result.epoch)
        if not math.isnan(result.val_dice):
            writer.add_scalar('loss/val', result.val_loss, result.epoch)
            writer.add_scalar('dice/val', result.val_dice, result.epoch)
            if self.overlay is not None and (
                self.last_image_epoch is None or result.epoch - self.last_image_epoch >= self.config.image_every
            ):
                writer.add_image('val/overlay', self.overlay, result.epoch, dataformats='HWC')
                self.last_image_epoch = result.epoch
        writer.flush()
        append_metric_row(self.run_dir / 'metrics.csv', result)
        validation = (
            f'val loss {result.val_loss:.4f}  val Dice {result.val_dice:.4f}  '
            if not math.isnan(result.val_dice)
            else ''
        )
        tqdm.write(
            f'epoch {result.epoch}/{self.schedule.total_epochs}  train loss {result.train_loss:.4f}  '
            f'{validation}lr {result.lr:.2e}  {result.epoch_seconds:.1f}s'
        )


def create_trainer(config: RunConfig, train_subjects: list[tio.Subject], val_subjects: list[tio.Subject]) -> Trainer:
    """The trainer of a run: the config turned into its recipe and patch loader (see ``heartseg/recipe.py``)."""
    device = distributed.local_device(select_device(config.device))
    recipe = build_recipe(config, device)
    patches = build_patch_loader(config, train_subjects, recipe.augmentation, device)
    return Trainer(
        config, recipe, patches, val_subjects, device, summarise_training_cases(train_subjects, config.outputs)
    )
