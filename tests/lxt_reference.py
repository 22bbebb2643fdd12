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
    lxt = pytest.importorskip("lxt", reason="lxt is a test-only extra: pip install --no-deps lxt==2.1")
    if "lxt.efficient.models" not in sys.modules:
        stub = types.ModuleType("lxt.efficient.models")

        def get_default_map(module: Any) -> dict:
            raise ValueError("the stub of lxt.efficient.models has no default map: pass patch_map")

        stub.get_default_map = get_default_map
        sys.modules["lxt.efficient.models"] = stub
    import lxt.efficient.patches as patches

    assert pathlib.Path(patches.__file__).parent.parent == pathlib.Path(lxt.__file__).parent / "efficient"
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
def patched(patch_map: dict) -> Iterator[None]:
    """Apply an LXT patch map (class -> patch function) and restore every class after."""
    saved = {cls: {k: cls.__dict__[k] for k in ("forward", "original_forward") if k in cls.__dict__}
             for cls in patch_map}
    try:
        for cls, patch in patch_map.items():
            assert patch(cls), f"LXT did not patch {cls.__name__}"
        yield
    finally:
        for cls, attrs in saved.items():
            for k in ("forward", "original_forward"):
                if k in attrs:
                    setattr(cls, k, attrs[k])
                elif k in cls.__dict__:
                    delattr(cls, k)
