"""What a frame pass gives back besides pixels: the prediction of each frame, and its one-line failure."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from realtime_lrp.pipeline.render import label_text


class ProcessingError(RuntimeError):
    """A frame batch could not be explained (for example CUDA out of memory); one line."""


@dataclass(frozen=True)
class Prediction:
    """The model's top-1 class of a frame, its probability and the class LRP explained."""

    index: int
    name: str
    probability: float
    explained: int
    explained_name: str

    @property
    def label(self) -> str:
        """``"Coat  97.3%"``, plus ``"  [LRP: Shirt]"`` when another class is explained."""
        text = label_text(self.name, self.probability)
        if self.explained != self.index:
            text += f"  [LRP: {self.explained_name}]"
        return text


def out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is the CUDA or CPU allocator running out (the CPU's is a plain RuntimeError)."""
    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or "can't allocate memory" in str(error)
