"""``rtlrp export``: a training checkpoint to fp16 weights plus a JSON model card.

The card (``NAME.json`` beside ``NAME.pt``) records everything needed to rebuild the model
and reproduce ``test_accuracy``: the architecture parameters, the class names, and the
preprocessing (bilinear resize of the whole image to ``input_size``, then ``mean``/``std``).
``test_accuracy`` is measured on the exported fp16 weights, loaded back as fp32.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from realtime_lrp.apps.train.loop import evaluate, load_checkpoint
from realtime_lrp.models.cards import CARD_FORMAT, validate_card
from realtime_lrp.models.datasets import load_datasets
from realtime_lrp.models.files import load_weights_file, sha256_file
from realtime_lrp.util.atomic import OutputError, check_writable, commit, partial_path, reason, remove, write_json


def fp16_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating-point tensors to fp16; integer buffers (BatchNorm counters) unchanged."""
    return {k: v.detach().to("cpu", torch.float16) if v.is_floating_point() else v.detach().cpu()
            for k, v in state.items()}


def measure_accuracy(weights: Path, batch_size: int = 512) -> float:
    """Top-1 accuracy of exported ``weights`` on their card's dataset test split, fp32 on CPU."""
    model, card = load_weights_file(weights)
    _, test_set, info = load_datasets(card["dataset"], card["input_size"])
    info.mean, info.std = list(card["mean"]), list(card["std"])
    model = model.to(memory_format=torch.channels_last)
    return evaluate(model, test_set, info, torch.device("cpu"), batch_size=batch_size)["test_acc"]


def export(source: Path, out: Path, measure: bool = True) -> dict[str, Any]:
    """Write ``out`` (fp16 state dict) and ``out.with_suffix('.json')``; return the card.

    With ``measure`` the card's ``test_accuracy`` is measured on the exported weights;
    otherwise the checkpoint's last evaluation is used. Both files are completed and
    measured as ``NAME.partial.pt`` / ``NAME.partial.json`` first and only then moved into
    place, so a failed or interrupted export leaves any previous export untouched.
    """
    ckpt = load_checkpoint(Path(source))
    out = Path(out)
    if out.suffix != ".pt":
        raise ValueError(f"--out must end in .pt, not {out.name!r}")
    check_writable(out)
    weights, card_file = partial_path(out), partial_path(out.with_suffix(".json"))
    try:
        try:
            torch.save(fp16_state_dict(ckpt["model"]), weights)
        except (OSError, RuntimeError) as error:  # torch's zip writer reports I/O errors as RuntimeError
            detail = reason(error) if isinstance(error, OSError) else str(error).split("strerror: ")[-1]
            raise OutputError(f"cannot write {out}: {detail}") from None
        args = ckpt["args"]
        card: dict[str, Any] = {
            **ckpt["meta"],
            "test_accuracy": ckpt.get("test_accuracy"),
            "command": args.get("command", ""),
            "sha256": sha256_file(weights),
            "format": CARD_FORMAT,
            "precision": "fp16",
            "trained_steps": ckpt["step"],
            "epochs": args.get("epochs"),
            "amp": bool(args.get("amp") or args.get("amp_dtype")),
            "preprocessing": "bilinear resize of the whole image to input_size (no pad, no crop), "
                             "scale to [0, 1], then (x - mean) / std per channel",
        }
        validate_card(card, "exported card")
        write_json(card_file, card)
        if measure:
            card["test_accuracy"] = round(measure_accuracy(weights), 5)
            write_json(card_file, card)
        commit(weights, out)
        commit(card_file, out.with_suffix(".json"))
    finally:
        remove(weights)
        remove(card_file)
    return card
