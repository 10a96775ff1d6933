"""vlm4rec: multimodal recommendation through vision-language grounding (VLM4Rec), as a reproducible study.

Offline, once per item: :mod:`vlm4rec.grounding` describes each image, :mod:`vlm4rec.encoders` and
:mod:`vlm4rec.representations` embed the descriptions (and titles, and raw image features). Online:
:mod:`vlm4rec.matching` builds each user's profile from their history and ranks items by cosine.
:mod:`vlm4rec.evaluation`, :mod:`vlm4rec.metrics` and :mod:`vlm4rec.stats` score every method the same
way; :mod:`vlm4rec.pipeline` is the glue the DVC stages' notebooks call.
"""

__version__ = "0.1.0"
