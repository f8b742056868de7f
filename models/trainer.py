"""Training the audio-only classifier, the model side: processes (one, or torchrun's DDP group),
the model and its optimiser and schedule, one optimiser step with text injection (`Trainer`), and
the saved model and checkpoints (`save_model`, `load_classifier`, `save_checkpoint`). The run
itself (data, loaders, validation, the epoch loop) is tasks/train.py.

One optimizer step covers `world_size × grad_accum` micro-batches of `batch_size` clips, chosen
the same way whatever the world size (so 2 processes × 4 micro-batches equal 1 process × 8).
With text injection, the step first encodes its micro-batches without gradient to compute the
text loss over the whole step's batch (`text_loss_gradients`), then backpropagates each
micro-batch with the cached gradient: contrastive negatives span micro-batches and ranks."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.nn.functional import binary_cross_entropy_with_logits

from voxtox.labels import CLASSES
from voxtox.models.speech_classifier import ClassifierOutput, SpeechToxicityClassifier
from voxtox.models.text_injection import TextLoss, TextLossParams, make_text_loss, text_loss_gradients
from voxtox.models.whisper_encoder import encoder_config_json, encoder_from_config_json, load_speech_encoder
from voxtox.settings import TrainSettings
from voxtox.storage.clips import ClipIndex
from voxtox.storage.model_store import resolve_model
from voxtox.storage.runs import CHECKPOINTS

KEPT_CHECKPOINTS = 2


@dataclass
class Batch:
    indices: Tensor  # (batch,) rows of the ClipIndex; for windows, the clip each window belongs to
    features: Tensor  # (batch, n_mels, frames), right-padded with zeros
    frame_lengths: Tensor  # (batch,)


# --- processes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Processes:
    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def start_processes() -> Processes:
    """Join torchrun's process group when launched by it; otherwise one process, no group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world == 1:
        return Processes(0, 1, torch.device("cuda" if cuda else "cpu"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return Processes(dist.get_rank(), dist.get_world_size(), device)


def reduce_sum(value: Tensor) -> Tensor:
    if dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value)
    return value


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


# --- model, optimiser, schedule --------------------------------------------------------------


def build_model(train: TrainSettings, text_dim: int, cache_dir: Path) -> SpeechToxicityClassifier:
    encoder = load_speech_encoder(resolve_model(train.encoder, cache_dir))
    encoder.freeze(conv_frontend=train.freeze_conv, first_layers=train.freeze_layers)
    layer = train.layer if train.alpha < 1 else -1  # the baseline injects nothing
    return SpeechToxicityClassifier(encoder, len(CLASSES), text_dim, layer)


def make_optimizer(model: nn.Module, train: TrainSettings) -> torch.optim.AdamW:
    """AdamW; biases and norm gains are not decayed (as transformers' Trainer does)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": train.weight_decay},
        {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=train.learning_rate, eps=train.adam_eps)


def warmup_then_linear_decay(total_steps: int, warmup_ratio: float) -> Callable[[int], float]:
    warmup = math.ceil(total_steps * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


# --- one optimizer step ----------------------------------------------------------------------


@dataclass
class StepLosses:
    bce: float
    text: float
    total: float


@dataclass
class Trainer:
    model: SpeechToxicityClassifier
    wrapped: nn.Module  # the model, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    clips: ClipIndex
    text_loss: TextLoss
    alpha: float
    processes: Processes
    autocast_dtype: torch.dtype | None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.processes.device.type, dtype=self.autocast_dtype)

    def step(self, micro_batches: list[Batch]) -> StepLosses:
        device = self.processes.device
        indices = torch.cat([b.indices for b in micro_batches])
        labels = torch.from_numpy(self.clips.labels[indices.numpy()]).to(device)
        text = torch.from_numpy(self.clips.text[indices.numpy()]).to(device)
        n_global = reduce_sum(torch.tensor(float(len(indices)), device=device))
        # One micro-batch in one process holds the whole step's batch: the text loss is taken on
        # its own forward pass, and the no-grad pass that caches the text loss's gradient for
        # several micro-batches (or ranks) would only repeat that forward pass.
        one_pass = self.alpha < 1 and len(micro_batches) == 1 and self.processes.world == 1
        text_value = float("nan")
        cached = None
        if self.alpha < 1 and not one_pass:
            with torch.no_grad(), self.autocast():
                x = torch.cat([self._forward(b).injected.float() for b in micro_batches])
            cached = text_loss_gradients(self.text_loss, x, text, labels)
        bce_sum = torch.zeros((), device=device)
        offset = 0
        for number, batch in enumerate(micro_batches):
            rows = slice(offset, offset + len(batch.indices))
            offset = rows.stop
            last = number == len(micro_batches) - 1
            sync = contextlib.nullcontext() if last or self.processes.world == 1 else self.wrapped.no_sync()
            with sync:
                with self.autocast():
                    output = self._forward(batch)
                bce = binary_cross_entropy_with_logits(output.logits.float(), labels[rows], reduction="none")
                bce = bce.mean(dim=1).sum() / n_global
                loss = self.alpha * bce
                if one_pass:
                    text_loss = self.text_loss(output.injected.float(), text, labels)
                    loss = loss + (1 - self.alpha) * text_loss
                    text_value = float(text_loss.detach())
                elif cached is not None:
                    loss = loss + (1 - self.alpha) * (output.injected.float() * cached.grad[rows]).sum()
                # DDP averages gradients over ranks; each rank's loss is its share of the sum.
                self.scaler.scale(loss * self.processes.world).backward()
            bce_sum += bce.detach()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        bce_value = float(reduce_sum(bce_sum))
        if cached is not None:
            text_value = float(cached.loss)
        total = bce_value if self.alpha == 1 else self.alpha * bce_value + (1 - self.alpha) * text_value
        return StepLosses(bce_value, text_value, total)

    def _forward(self, batch: Batch) -> ClassifierOutput:
        device = self.processes.device
        return self.wrapped(batch.features.to(device, non_blocking=True), batch.frame_lengths.to(device))


# --- run directory and checkpoints -----------------------------------------------------------


@dataclass
class TrainState:
    """Where training stands; saved with every checkpoint so a resumed run continues exactly."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_map: float = -math.inf
    best_epoch: int = -1
    history: list[dict[str, float]] = field(default_factory=list)
    epoch_sums: dict[str, float] = field(default_factory=lambda: {"loss": 0.0, "bce": 0.0, "text": 0.0})
    epoch_started: float = field(default_factory=time.time)
    epoch_seconds: float = 0.0


def model_manifest(model: SpeechToxicityClassifier) -> dict[str, object]:
    return {
        "classes": list(CLASSES),
        "text_dim": model.projection.out_features,
        "inject_layer": model.inject_layer,
        "encoder_config": encoder_config_json(model.encoder),
    }


def save_model(model: SpeechToxicityClassifier, directory: Path, trainer_state: dict | None = None) -> None:
    """safetensors weights, the JSON to rebuild the module (`load_classifier`) and, for a
    checkpoint, the trainer's state; written beside the target, then renamed into place."""
    staging = directory.with_name(f".{directory.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, staging / "model.safetensors")
    (staging / "model.json").write_text(json.dumps(model_manifest(model), indent=2))
    if trainer_state is not None:
        torch.save(trainer_state, staging / "trainer.pt")
    shutil.rmtree(directory, ignore_errors=True)
    staging.rename(directory)


def load_classifier(directory: Path) -> SpeechToxicityClassifier:
    manifest = json.loads((directory / "model.json").read_text())
    encoder = encoder_from_config_json(manifest["encoder_config"])
    model = SpeechToxicityClassifier(encoder, len(manifest["classes"]), manifest["text_dim"], manifest["inject_layer"])
    model.load_state_dict(load_file(directory / "model.safetensors"))
    return model


def save_checkpoint(trainer: Trainer, state: TrainState, run_dir: Path) -> Path:
    """Model and trainer state in `checkpoints/step-N`, complete or absent (a kill leaves the
    previous checkpoint intact); the oldest beyond KEPT_CHECKPOINTS are removed."""
    target = run_dir / CHECKPOINTS / f"step-{state.global_step:08d}"
    trainer_state = {
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "state": asdict(state),
    }
    save_model(trainer.model, target, trainer_state)
    for old in sorted((run_dir / CHECKPOINTS).glob("step-*"))[:-KEPT_CHECKPOINTS]:
        shutil.rmtree(old)
    return target


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = sorted(p for p in (run_dir / CHECKPOINTS).glob("step-*") if (p / "trainer.pt").exists())
    return found[-1] if found else None


def restore_checkpoint(trainer: Trainer, checkpoint: Path) -> TrainState:
    trainer.model.load_state_dict(load_file(checkpoint / "model.safetensors"))
    saved = torch.load(checkpoint / "trainer.pt", map_location=trainer.processes.device, weights_only=True)
    trainer.optimizer.load_state_dict(saved["optimizer"])
    trainer.scheduler.load_state_dict(saved["scheduler"])
    trainer.scaler.load_state_dict(saved["scaler"])
    state = TrainState(**saved["state"])
    state.epoch_started = time.time() - state.epoch_seconds
    return state


def make_trainer(
    train: TrainSettings, clips: ClipIndex, cache_dir: Path, total_steps: int, processes: Processes
) -> Trainer:
    """The model (DDP-wrapped across processes), AdamW, warm-up then linear decay, mixed precision
    on a GPU, and the text loss, as `train` says."""
    torch.manual_seed(train.seed)
    model = build_model(train, clips.text.shape[1], cache_dir).to(processes.device)
    wrapped: nn.Module = model
    if processes.world > 1:
        ids = [processes.device.index] if processes.device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    optimizer = make_optimizer(model, train)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_then_linear_decay(total_steps, train.warmup_ratio))
    on_gpu = processes.device.type == "cuda"
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[train.precision] if on_gpu else None
    params = TextLossParams(train.temperature, train.margin, train.proxy_alpha, train.proxy_beta, train.proxy_margin)
    return Trainer(
        model=model,
        wrapped=wrapped,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=torch.amp.GradScaler(enabled=autocast == torch.float16),
        clips=clips,
        text_loss=make_text_loss(train.loss, params),
        alpha=train.alpha,
        processes=processes,
        autocast_dtype=autocast,
    )
