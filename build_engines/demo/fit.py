"""A brief fit of the demo policy to synthetic episodes, so its velocities respond to the image.

Accuracy gates and scores on a random-weights model prove little: its outputs barely move. A randomly initialized
tiny backbone carries almost no image information to the action token (its image embeds are ~30x smaller than the
text embeddings) and a 4-layer LSTM at PyTorch's init attenuates its input ~10^4-fold, so end-to-end training for a
few hundred steps collapses to the mean action. `demo_init` rescales three tensors so that information gets through,
then `fit_head` trains the LSTM head on the frozen backbone's features (computed once per frame through the export
modules, the graphs' own computation), on windows of consecutive frames as RoboVLMs trains: the LSTM runs from zero
state over a window and every step is supervised with the normalized action chunk that follows it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from build_engines.export import TrunkExport, VisionExport
from build_engines.reference import ReferencePolicy
from runtime.bundle import ActionSettings
from runtime.episodes import EpisodeInfo, iter_episode_frames
from runtime.preprocess import Preprocessing
from runtime.prompt import PromptEncoder


@dataclass(frozen=True)
class FitSettings:
    steps: int = 800
    batch: int = 32  # windows per step
    learning_rate: float = 2e-3
    # AdamW's decoupled decay and Gaussian noise on the training features: together they bound the head's gain, so
    # it does not hang its output on feature differences finer than an INT8 trunk computes (docs/building.md)
    weight_decay: float = 0.5
    feature_noise: float = 0.01
    seed: int = 0


@dataclass(frozen=True)
class FitReport:
    steps: int
    episodes: int
    frames: int
    first_loss: float
    final_loss: float
    seconds: float
    weights_sha256: str = ""  # of the fitted head and action token: equal on every build host (demo/pinned.py)
    cpu: str = ""  # what the fit's PyTorch ran on

    def to_dict(self) -> dict[str, float | int | str]:
        return {"steps": self.steps, "episodes": self.episodes, "frames": self.frames,
                "first_loss": round(self.first_loss, 5), "final_loss": round(self.final_loss, 5),
                "seconds": round(self.seconds, 1), "weights_sha256": self.weights_sha256, "cpu": self.cpu}

    def describe(self) -> str:
        return (f"fitted the demo policy's head to {self.episodes} synthetic episodes in {self.seconds:.1f} s on "
                f"{self.cpu}: loss {self.first_loss:.4f} -> {self.final_loss:.4f}, weights "
                f"sha256 {self.weights_sha256[:16]}")


@dataclass
class EpisodeTensors:
    frames: Tensor  # (N, S, S, C) uint8
    targets: Tensor  # (N, chunk, d') normalized chunk targets
    text: dict[str, Tensor]  # the trunk's text inputs, batch 1


def normalize_actions(actions: np.ndarray, action: ActionSettings) -> np.ndarray:
    """The inverse of the runtime's de-normalization: recorded velocities -> the head's [-1, 1] range."""
    if not action.norm_action:
        return np.clip(actions, -1.0, 1.0)
    low, high = np.asarray(action.norm_min, np.float32), np.asarray(action.norm_max, np.float32)
    return np.clip((actions - low) / (high - low) * 2.0 - 1.0, -1.0, 1.0)


def chunk_targets(actions: np.ndarray, chunk: int) -> np.ndarray:
    """`(N, d)` -> `(N, chunk, d)`: for frame t the actions t .. t+chunk-1, the last one repeated past the end."""
    n = actions.shape[0]
    index = np.minimum(np.arange(n)[:, None] + np.arange(chunk)[None, :], n - 1)
    return actions[index]


def load_episode(info: EpisodeInfo, color: str, pre: Preprocessing, encoder: PromptEncoder, instruction: str,
                 policy: ReferencePolicy, action: ActionSettings) -> EpisodeTensors:
    head = policy.head_config
    width = head.action_dim if head.variant == "velocities" else head.action_dim - 1
    items = list(iter_episode_frames(info, color, pre, width))
    frames = np.stack([item.pixels for item in items])
    recorded = np.stack([item.action for item in items if item.action is not None])
    targets = chunk_targets(normalize_actions(recorded, action), head.chunk)
    text = {k: torch.from_numpy(v) for k, v in encoder.encode(info.instruction or instruction).feed().items()}
    return EpisodeTensors(torch.from_numpy(frames), torch.from_numpy(targets.astype(np.float32)), text)


def fitted_weights_sha256(policy: ReferencePolicy) -> str:
    """sha256 over what the fit trains (the head) and the action token, by name and exact float32 bytes."""
    digest = hashlib.sha256()
    tensors = {f"act_head.{k}": v for k, v in policy.act_head.state_dict().items()}
    tensors["action_token"] = policy.action_token.detach()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].detach().to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def head_outputs(policy: ReferencePolicy, features: Tensor) -> Tensor:
    """LSTM from zero state over `(B, W, D)` -> every step's action chunk `(B, W, chunk, d')`."""
    head = policy.act_head
    out, _ = head.rnn(features)
    mlp = head.velocities if policy.head_config.variant == "velocities" else head.actions
    flat: Tensor = mlp(out)
    return flat.reshape(*out.shape[:2], policy.head_config.chunk, -1)


@torch.no_grad()
def demo_init(policy: ReferencePolicy) -> None:
    """Scale the tiny demo policy so image information reaches the head (see the module docstring)."""
    projection = policy.backbone.image_to_text_projection.x_attn.out_proj
    projection.weight.mul_(300.0)  # image embeds to the text embeddings' scale
    projection.bias.mul_(300.0)
    policy.backbone.text_model.model.layer_norm.weight.mul_(0.3)  # features ~1 per element: LSTM gates unsaturated
    for name, value in policy.act_head.rnn.named_parameters():
        if name.startswith("weight_ih"):
            value.mul_(4.0)  # per-layer gain ~0.6 instead of ~0.15


@torch.no_grad()
def episode_features(vision: VisionExport, trunk: TrunkExport, data: EpisodeTensors) -> Tensor:
    """Every frame's action feature `(N, D)`, in one batch."""
    n = data.frames.shape[0]
    text = [data.text[k].expand(n, *data.text[k].shape[1:]) for k in ("input_ids", "attention_mask", "action_index")]
    features: Tensor = trunk(vision(data.frames), *text)
    return features


def fit_head(policy: ReferencePolicy, episodes: Sequence[EpisodeInfo], color: str, pre: Preprocessing,
             encoder: PromptEncoder, instruction: str, action: ActionSettings,
             settings: FitSettings = FitSettings()) -> FitReport:
    """Train the LSTM head on the frozen backbone's features of `episodes` (see the module docstring)."""
    if settings.steps == 0:  # tests that only need the export path skip the fit
        return FitReport(0, len(episodes), 0, 0.0, 0.0, 0.0, fitted_weights_sha256(policy))
    started = time.perf_counter()
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    data = [load_episode(e, color, pre, encoder, instruction, policy, action) for e in episodes]
    vision, trunk = VisionExport(policy, pre), TrunkExport(policy, encoder.settings)
    window = policy.head_config.window
    features = [episode_features(vision, trunk, d) for d in data]
    inputs = torch.stack([f[s : s + window] for f in features for s in range(max(1, f.shape[0] - window + 1))])
    targets = torch.stack([d.targets[s : s + window] for d in data
                           for s in range(max(1, d.frames.shape[0] - window + 1))])
    noise = np.random.default_rng(settings.seed + 1)  # numpy's normals are exact integer work: the same everywhere
    optimizer = torch.optim.AdamW(policy.act_head.parameters(), lr=settings.learning_rate,
                                  weight_decay=settings.weight_decay)
    policy.act_head.train()
    losses = []
    for _ in range(settings.steps):
        picks = torch.from_numpy(rng.integers(0, inputs.shape[0], settings.batch))
        batch = inputs[picks]
        if settings.feature_noise:
            batch = batch + settings.feature_noise * torch.from_numpy(
                noise.standard_normal(tuple(batch.shape)).astype(np.float32))
        loss = torch.nn.functional.mse_loss(head_outputs(policy, batch), targets[picks])  # tanh inside
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    policy.eval()
    return FitReport(settings.steps, len(data), sum(d.frames.shape[0] for d in data), float(np.mean(losses[:5])),
                     float(np.mean(losses[-20:])), time.perf_counter() - started, fitted_weights_sha256(policy))
