"""The FID Inception-v3 (``inception`` / ``inception:<weights file>``): 2048-d pool features and 1008 logits.

The network is torch-fidelity's ``FeatureExtractorInceptionV3`` (same blocks and state-dict keys,
so its ``weights-inception-2015-12-05-6726825d.pth`` loads as is, the file pytorch-fid,
torch-fidelity and torchmetrics share). Unlike torch-fidelity's module it takes a float batch that
is already resized and normalized, so the ``clean`` resize reaches the network unquantized and
resizing stays in ``evalkit.features.resize``. With ``resize="tf1"`` features equal torch-fidelity's.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import ModelNotFoundError, UserError, first_line, unreadable_weights
from .base import FeatureExtractor, Preprocess, weights_sha256

INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
# pytorch-fid's name for the same file (torch hub names carry the sha256 prefix: both are 6726825d)
PYTORCH_FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
INPUT_SIZE = 299


def default_inception_path() -> Path:
    """Where torch-fidelity and torchmetrics put the file when they download it (torch hub checkpoints)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE


def find_inception_weights() -> Path | None:
    """The weights in the torch hub checkpoints folder under torch-fidelity's or pytorch-fid's name, if there."""
    for name in (INCEPTION_WEIGHTS_FILE, PYTORCH_FID_WEIGHTS_FILE):
        path = default_inception_path().with_name(name)
        if path.is_file():
            return path
    return None


class FIDInceptionV3(nn.Module):
    """torch-fidelity's Inception-v3 layers; ``forward`` maps ``(x - 128) / 128`` input to pool and logits."""

    def __init__(self) -> None:
        from torch_fidelity.feature_extractor_inceptionv3 import (
            BasicConv2d,
            InceptionA,
            InceptionB,
            InceptionC,
            InceptionD,
            InceptionE_1,
            InceptionE_2,
        )

        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.MaxPool_1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.MaxPool_2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE_1(1280)
        self.Mixed_7c = InceptionE_2(2048)
        self.AvgPool = nn.AdaptiveAvgPool2d(output_size=(1, 1))
        self.fc = nn.Linear(2048, 1008)

    def train(self, mode: bool = True) -> FIDInceptionV3:
        """Always eval mode (as torchmetrics' NoTrainInceptionV3): batch norm must use its stored statistics."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        for layer in (self.Conv2d_1a_3x3, self.Conv2d_2a_3x3, self.Conv2d_2b_3x3, self.MaxPool_1):
            x = layer(x)
        for layer in (self.Conv2d_3b_1x1, self.Conv2d_4a_3x3, self.MaxPool_2):
            x = layer(x)
        for layer in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a):
            x = layer(x)
        for layer in (self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e):
            x = layer(x)
        for layer in (self.Mixed_7a, self.Mixed_7b, self.Mixed_7c, self.AvgPool):
            x = layer(x)
        pool = torch.flatten(x, 1)
        unbiased = pool.mm(self.fc.weight.T)  # torch-fidelity's 'logits_unbiased', which Inception Score uses
        return {"pool": pool, "logits_unbiased": unbiased, "logits": unbiased + self.fc.bias.unsqueeze(0)}


def load_inception_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.pth``/``.pt`` (torch.save, loaded with ``weights_only=True``) or ``.safetensors``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # a truncated or foreign file
            raise unreadable_weights(path, e) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors differ across torch versions
        raise unreadable_weights(path, e) from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"{path} does not hold a state dict")
    return state


class InceptionExtractor(FeatureExtractor):
    """FID Inception-v3: ``pool`` (2048, FID/KID/PR), ``logits_unbiased`` (1008, Inception Score as
    torch-fidelity/torchmetrics compute it) and ``logits`` (1008, with the fc bias)."""

    def __init__(self, weights_path: str | Path, resize: str = "clean", device: str | torch.device = "cpu") -> None:
        super().__init__(device)
        state = {
            k: v.float() if v.is_floating_point() else v for k, v in load_inception_state_dict(weights_path).items()
        }
        with torch.device("meta"):  # skip random init of 24M weights that the file replaces
            net = FIDInceptionV3()
        try:
            net.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as e:
            raise UserError(f"{weights_path} is not FID Inception-v3 weights: {first_line(e)}") from None
        self.module = net.to(self.device).eval().requires_grad_(False)
        self.name = "inception-v3-fid"
        self.weights_hash = weights_sha256(weights_path)
        self.weights_path = str(weights_path)
        # (x/255 - 128/255) / (128/255) == (x - 128) / 128, the TF graph's normalization
        self.preprocess = Preprocess(INPUT_SIZE, resize, (128 / 255,) * 3, (128 / 255,) * 3, "none")
        self.features = {"pool": 2048, "logits_unbiased": 1008, "logits": 1008}

    def _forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.module(x)


def load_inception(arg: str | None, resize: str = "clean", device: str | torch.device = "cpu") -> InceptionExtractor:
    """``inception`` (torch hub checkpoints folder) or ``inception:<path to weights file>``."""
    path = Path(arg).expanduser() if arg else (find_inception_weights() or default_inception_path())
    if not path.is_file():
        from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

        raise ModelNotFoundError(
            f"FID Inception weights not found at {path}: download {INCEPTION_WEIGHTS_FILE} "
            f"({URL_INCEPTION_V3}) and put it at {default_inception_path()}, or pass inception:/path/to/the/file"
        )
    return InceptionExtractor(path, resize=resize, device=device)
