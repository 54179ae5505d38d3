"""How the image encoder's attention is written into ``encoder.onnx`` (``--attention``).

SAM's attention adds a decomposed relative-position bias (``q . R_h`` per key row plus ``q . R_w``
per key column) to every logit. The plain export writes it as the torch model computes it: a 5-D
broadcast add reshaped to a BHxNxN bias, which TensorRT's automatic multi-head-attention fusion
does not recognise. The modes:

- ``plain``: the torch model's own graph (default; any opset).
- ``fused-pattern``: the form TensorRT documents for MHA fusion: queries multiplied by the scale
  *before* the first MatMul, all four tensors 4-D (B x heads x N x .), and one additive 4-D bias
  formed from 4-D tensors only (``rel_h`` as BHxNxHx1 plus ``rel_w`` as BHxNx1xW, reshaped to
  B x heads x N x N: no 5-D broadcast, no extra MatMuls), then Softmax and the MatMul with V.
  Bit-identical to the plain model in float32. Works with every TensorRT (10.3 on JetPack 6
  included) and is the fallback wherever the plugin is unavailable.
- ``onnx-attention``: the ONNX ``Attention`` op (opset >= 23) with the same bias as an additive
  float mask and the ``scale`` attribute; TensorRT >= 10.14 imports it as its native attention
  layer (``IAttention``). ONNX Runtime >= 1.23 runs it on CPU.
- ``plugin``: each attention core is one ``samexport::SamRelPosAttention`` node (see
  ``samexport.plugins.onnx_node``) taking q, k, v and the two small projections; TensorRT >= 10.9
  with ``samexport.plugins.tensorrt_plugin`` registered runs it as the fused Triton kernel, which
  forms the bias on the fly instead of materialising BHxNxN values. ONNX Runtime cannot run this
  graph as is; :func:`samexport.plugins.onnx_node.inline_reference` makes a checkable copy.

Every mode keeps the encoder's inputs, outputs and weights; only the attention core changes.

Which modes apply depends on the encoder family (``EncoderFamily.attention_modes``): the four
above are SAM-ViT's; TinyViT (MobileSAM) has ``plain``, ``fused-pattern`` and ``onnx-attention``
(its bias is a learned table, see ``samexport.models.tiny_vit.Attention``). How each family's
encoder is switched is :data:`FAMILY_MODES`, keyed by family name. A mode that does not apply to
the family is a :class:`SamExportError`, never a silent no-op.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn

from samexport import constants as C
from samexport.errors import SamExportError
from samexport.models import tiny_vit
from samexport.models.families import EncoderFamily, family_of
from samexport.models.image_encoder import Attention, decomposed_rel_pos, expand_rel_pos_bias
from samexport.plugins import onnx_node  # registers the plugin's torch op

AttentionMode = Literal["plain", "fused-pattern", "onnx-attention", "plugin"]
ATTENTION_MODES: tuple[str, ...] = get_args(AttentionMode)


@dataclass(frozen=True)
class CheckedAttention:
    """An attention mode checked against an encoder family and an ONNX opset: what
    :func:`check_attention_mode` returns. :func:`attention_mode` and
    ``samexport.export.to_onnx.export_encoder`` take it without checking again (a plain mode
    string they check themselves)."""

    mode: AttentionMode
    opset: int
    family: EncoderFamily


def check_attention_mode(mode: str, opset: int, family: EncoderFamily) -> CheckedAttention:
    """``mode`` checked for the encoder ``family`` and ``opset``.

    Raises:
        SamExportError: an unknown mode, one that does not apply to ``family``, or an opset too
            old for it.
    """
    if mode not in ATTENTION_MODES:
        raise SamExportError(f"unknown attention mode {mode!r}; valid modes: {', '.join(ATTENTION_MODES)}")
    family.check_attention_mode(mode)
    if opset < C.MIN_OPSET[mode]:
        raise SamExportError(f"--attention {mode} needs ONNX opset >= {C.MIN_OPSET[mode]}, got opset {opset}")
    return CheckedAttention(mode, opset, family)


def _heads_first(attn: Attention, t: torch.Tensor) -> torch.Tensor:
    """(B*heads)xNxX -> B x heads x N x X."""
    return t.reshape(-1, attn.num_heads, t.shape[-2], t.shape[-1])


def _bias_4d(attn: Attention, q: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """The decomposed rel-pos bias as one B x heads x N x N tensor, built from 4-D tensors only."""
    rel_h, rel_w = decomposed_rel_pos(q, attn.rel_pos_h, attn.rel_pos_w, grid_hw)  # BHxNxH, BHxNxW
    return expand_rel_pos_bias(rel_h, rel_w, heads=attn.num_heads)


def fused_pattern_core(
    attn: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid_hw: tuple[int, int]
) -> torch.Tensor:
    """``Softmax((q * scale) @ k^T + bias) @ v`` in TensorRT's MHA-fusion form; (B*heads)xNxD out."""
    q4, k4, v4 = (_heads_first(attn, t) for t in (q, k, v))
    logits = (q4 * attn.scale) @ k4.transpose(-2, -1)
    probs = (logits + _bias_4d(attn, q, grid_hw)).softmax(dim=-1)
    return (probs @ v4).reshape(q.shape)


def onnx_attention_core(
    attn: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid_hw: tuple[int, int]
) -> torch.Tensor:
    """SDPA with the bias as an additive mask: exported as ONNX ``Attention`` at opset >= 23."""
    q4, k4, v4 = (_heads_first(attn, t) for t in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(
        q4, k4, v4, attn_mask=_bias_4d(attn, q, grid_hw), scale=attn.scale
    )
    return out.reshape(q.shape)


def plugin_core(
    attn: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid_hw: tuple[int, int]
) -> torch.Tensor:
    """The two small projections in-graph, then one plugin node (``samexport::rel_pos_attention``)."""
    rel_h, rel_w = decomposed_rel_pos(q, attn.rel_pos_h, attn.rel_pos_w, grid_hw)
    return onnx_node.rel_pos_attention(q, k, v, rel_h, rel_w, grid_hw[0], grid_hw[1], attn.scale)


_CORES = {
    "plain": None,
    "fused-pattern": fused_pattern_core,
    "onnx-attention": onnx_attention_core,
    "plugin": plugin_core,
}


@contextlib.contextmanager
def attention_mode(
    encoder: nn.Module, mode: AttentionMode | CheckedAttention, family: EncoderFamily | None = None
) -> Iterator[dict]:
    """Within the block, ``encoder`` computes its attention in ``mode``'s formulation.

    ``mode``: a mode name, checked here, or a :class:`CheckedAttention` (already checked, for its
    own family). ``family`` defaults to the one ``encoder`` belongs to. Yields the extra keyword
    arguments ``torch.onnx.export(dynamo=True)`` needs for the mode. The previous formulation is
    restored on exit.

    Raises:
        SamExportError: ``mode`` is unknown or does not apply to the family's encoders.
    """
    if isinstance(mode, CheckedAttention):
        family, mode = mode.family, mode.mode
    else:
        if mode not in ATTENTION_MODES:
            raise SamExportError(f"unknown attention mode {mode!r}; valid modes: {', '.join(ATTENTION_MODES)}")
        family = family or family_of(encoder)
        family.check_attention_mode(mode)
    with FAMILY_MODES[family.name](encoder, mode) as extra:
        yield extra


@contextlib.contextmanager
def vit_attention_mode(encoder: nn.Module, mode: AttentionMode) -> Iterator[dict]:
    """:func:`attention_mode` for SAM-ViT encoders: every ``Attention`` in ``encoder`` gets the
    mode's core (see the module docstring); the plugin mode also yields the plugin node's
    translation table for the exporter."""
    export_kwargs: dict = {}
    if mode == "plugin":
        export_kwargs["custom_translation_table"] = onnx_node.onnx_translation_table()
    modules = [m for m in encoder.modules() if isinstance(m, Attention)]
    previous = [m.core for m in modules]
    for module in modules:
        module.core = _CORES[mode]
    try:
        yield export_kwargs
    finally:
        for module, core in zip(modules, previous):
            module.core = core


@contextlib.contextmanager
def tiny_vit_attention_mode(encoder: nn.Module, mode: AttentionMode) -> Iterator[dict]:
    """:func:`attention_mode` for TinyViT encoders: every ``tiny_vit.Attention`` in ``encoder``
    computes in ``mode`` (see :class:`samexport.models.tiny_vit.Attention`); nothing extra for
    the exporter."""
    modules = [m for m in encoder.modules() if isinstance(m, tiny_vit.Attention)]
    previous = [m.mode for m in modules]
    for module in modules:
        module.mode = mode
    try:
        yield {}
    finally:
        for module, before in zip(modules, previous):
            module.mode = before


FAMILY_MODES: dict[str, Callable[[nn.Module, AttentionMode], contextlib.AbstractContextManager[dict]]] = {
    "vit": vit_attention_mode,
    "tiny_vit": tiny_vit_attention_mode,
}
"""How an encoder family (by name) switches its encoder's attention to a mode (after
``EncoderFamily.check_attention_mode`` accepted the mode)."""
