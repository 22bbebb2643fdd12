"""LXT 2.1 (Achtibat et al.) as a test reference, imported without the LLM modules of ``transformers``.

``lxt.efficient``'s package imports its model map, which imports ``transformers``; its
patches and rules need none of it. :func:`efficient` puts a stub ``lxt.efficient.models``
into ``sys.modules`` first, and :func:`vit_patches` loads LXT's own torchvision ViT recipe
(``lxt/efficient/models/vit_torch.py``) from its file. LXT patches classes (``nn.LayerNorm``,
``nn.GELU``, ``nn.MultiheadAttention``) for the whole process: :func:`patched` undoes it.
"""
from __future__ import annotations

import contextlib
import importlib.util
import pathlib
import sys
import types
from typing import Any, Iterator

import pytest


def efficient() -> Any:
    """``lxt.efficient.patches`` (skips the test where lxt is not installed)."""
    pytest.importorskip("lxt", reason="lxt is a test-only extra: pip install --no-deps lxt==2.1")
    if "lxt.efficient.models" not in sys.modules:
        stub = types.ModuleType("lxt.efficient.models")

        def get_default_map(module: Any) -> dict:
            raise ValueError("the stub of lxt.efficient.models has no default map: pass patch_map")

        stub.get_default_map = get_default_map
        sys.modules["lxt.efficient.models"] = stub
    import lxt.efficient.patches as patches

    return patches


def explicit_functional() -> Any:
    """``lxt.explicit.functional``: the explicit LRP rules (softmax_fn, matmul_fn, layer_norm_grad_fn)."""
    pytest.importorskip("lxt", reason="lxt is a test-only extra: pip install --no-deps lxt==2.1")
    import lxt.explicit.functional as functional

    return functional


def vit_patches() -> dict:
    """LXT's ``cp_LRP`` patch map for torchvision's vision_transformer, from its own file."""
    patches = efficient()
    path = pathlib.Path(patches.__file__).parent / "models" / "vit_torch.py"
    spec = importlib.util.spec_from_file_location("lxt_vit_torch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.cp_LRP


@contextlib.contextmanager
def restored(cls: type, *names: str) -> Iterator[None]:
    """Whatever is done to ``cls``'s attributes ``names`` inside, they are as before after."""
    saved = {k: cls.__dict__[k] for k in names if k in cls.__dict__}
    try:
        yield
    finally:
        for k in names:
            if k in saved:
                setattr(cls, k, saved[k])
            elif k in cls.__dict__:
                delattr(cls, k)


@contextlib.contextmanager
def patched(patch_map: dict) -> Iterator[None]:
    """Apply an LXT patch map (class -> patch function) and restore every class after."""
    with contextlib.ExitStack() as stack:
        for cls, patch in patch_map.items():
            stack.enter_context(restored(cls, "forward", "original_forward"))
            assert patch(cls), f"LXT did not patch {cls.__name__}"
        yield


@contextlib.contextmanager
def zennit_in_gradient_x_input() -> Iterator[None]:
    """LXT's ``monkey_patch_zennit``: zennit's rules in the Gradient x Input convention, undone after."""
    efficient()
    import lxt.efficient.zennit_patches as zennit_patches
    from zennit.core import BasicHook

    with restored(BasicHook, "forward", "backward"):
        zennit_patches.monkey_patch_zennit()
        assert BasicHook.backward is zennit_patches.backward
        yield
