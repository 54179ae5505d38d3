"""Image-encoder families: what differs between SAM's encoders, owned by one object per family.

Every SAM variant shares the prompt encoder and the mask decoder; only the image encoder changes.
An :class:`EncoderFamily` answers, for its encoders:

- how to build one from its config (``build_encoder``) and from the official package
  (``official_sam``, the test and benchmark oracle);
- what a checkpoint's ``image_encoder.*`` tensors say about its shape (``describe``), so a
  checkpoint of the wrong variant is named ("looks like vit_l");
- its compute (``encoder_macs``), which ``--attention`` modes apply (``attention_modes``; another
  mode is an error), and which op types FP16 graphs must keep in FP32 beyond the defaults
  (``extra_fp32_ops``);
- the module to export for an encoder (``export_encoder_module``: TinyViT folds its BatchNorms);
- how tests perturb the parameters that default initialisation leaves constant
  (``randomize_``), so every parameter influences the outputs.

What a higher layer does differently per family lives in that layer, in a small table keyed by
the family's name: how export rewrites the attention (:mod:`samexport.export.attention`), how the
int8 recipe changes (:data:`samexport.precision.recipes.FAMILY_RECIPES`). The configs themselves
(:class:`ViTConfig`, :class:`TinyViTConfig`) are in :mod:`samexport.models.encoder_configs`. This module imports no torch at import time (the
registry, the CLI help and the benchmarks read it on machines without torch); building and
oracles import it when called.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

# The 64x64 image embedding with 256 channels every family produces, from a 1024x1024 input.
from samexport.constants import EMBED_DIM, EMBED_SIZE, IMAGE_SIZE, VIT_WINDOW_SIZE
from samexport.errors import SamExportError, require
from samexport.models.encoder_configs import MOBILE_SAM_TINY_VIT, TinyViTConfig, ViTConfig

if TYPE_CHECKING:
    import torch
    from torch import nn

ENCODER_PREFIX = "image_encoder."


class EncoderFamily(ABC):
    """One kind of image encoder. Subclasses are stateless singletons (:data:`FAMILIES`)."""

    name: str
    config_type: type
    attention_modes: tuple[str, ...] = ("plain",)
    extra_fp32_ops: frozenset[str] = frozenset()
    official_package: str  # import name of the reference implementation
    encoder_class: str  # "module:Class" of the encoders ``build_encoder`` makes

    def __repr__(self) -> str:
        return f"<encoder family {self.name}>"

    @abstractmethod
    def build_encoder(self, config: Any) -> nn.Module:
        """A freshly initialised encoder: 1x3x1024x1024 normalised image -> 1x256x64x64."""

    @abstractmethod
    def describe(self, state: Mapping[str, Any]) -> Any | None:
        """The config read off a state dict's ``image_encoder.*`` tensor shapes, or ``None`` when
        the keys are not this family's. Raises :class:`SamExportError` for an encoder of this
        family with parts missing."""

    @abstractmethod
    def encoder_macs(self, config: Any) -> int:
        """Multiply-accumulates of one encoder pass (matmuls and convolutions)."""

    @abstractmethod
    def official_sam(self, config: Any, state_dict: Mapping | None = None) -> nn.Module:
        """The official package's whole SAM with this encoder, in eval mode, with
        ``state_dict`` loaded if given."""

    @abstractmethod
    def randomize_(self, encoder: nn.Module) -> None:
        """Perturb, in place and from torch's global RNG, the parameters (and statistics) of
        ``encoder`` that default initialisation leaves constant."""

    def check_attention_mode(self, mode: str) -> None:
        """Raise :class:`SamExportError` unless ``mode`` applies to this family's attention."""
        if mode not in self.attention_modes:
            raise SamExportError(
                f"--attention {mode} does not apply to {self.name} encoders; "
                f"modes for {self.name}: {', '.join(self.attention_modes)}"
            )

    def export_encoder_module(self, encoder: nn.Module) -> nn.Module:
        """The module to export for ``encoder`` (default: itself). Families may return an
        equivalent rewritten copy (TinyViT folds its BatchNorms into the convolutions)."""
        return encoder


def _shape(state: Mapping[str, Any], key: str) -> tuple[int, ...]:
    try:
        return tuple(state[key].shape)
    except KeyError:
        raise SamExportError(f"checkpoint has no complete SAM image encoder (missing {key!r})") from None


def _loaded_for_eval(model: nn.Module, state_dict: Mapping | None) -> nn.Module:
    """``model`` with ``state_dict`` loaded if given, then in eval mode. ``eval()`` comes after
    loading: MobileSAM's attention caches its bias table (``ab``) when switched to eval mode, so a
    table cached before the weights were loaded would be stale."""
    if state_dict is not None:
        model.load_state_dict(state_dict)
    return model.eval()


def _perturb_parameters_(
    encoder: nn.Module, tables: tuple[str, ...], table_std: float, shifted: Callable[[str], bool]
) -> None:
    """In place, from torch's global RNG: parameters whose names end with one of ``tables`` are
    redrawn from N(0, ``table_std``); those ``shifted`` picks get N(0, 0.1) noise added."""
    import torch

    with torch.no_grad():
        for name, param in encoder.named_parameters():
            if name.endswith(tables):
                param.normal_(0.0, table_std)
            elif shifted(name):
                param.add_(torch.randn_like(param) * 0.1)


def _indices(state: Mapping[str, Any], prefix: str) -> list[int]:
    """Sorted integer child indices under ``prefix`` (``...blocks.`` -> [0, 1, ...])."""
    found = {k[len(prefix):].split(".", 1)[0] for k in state if k.startswith(prefix)}
    return sorted(int(i) for i in found if i.isdigit())


# -- SAM's ViT ----------------------------------------------------------------------------------


class ViTFamily(EncoderFamily):
    """SAM's ViT-B/L/H: 16x16 patches, windowed attention with decomposed relative positions."""

    name = "vit"
    config_type = ViTConfig
    attention_modes = ("plain", "fused-pattern", "onnx-attention", "plugin")
    official_package = "segment_anything"
    encoder_class = "samexport.models.image_encoder:ImageEncoderViT"
    PATCH = 16
    WINDOW = VIT_WINDOW_SIZE

    def build_encoder(self, config: ViTConfig) -> nn.Module:
        from samexport.models.image_encoder import ImageEncoderViT

        return ImageEncoderViT(
            embed_dim=config.embed_dim,
            depth=config.depth,
            num_heads=config.num_heads,
            global_attn_indexes=config.global_attn_indexes,
        )

    def describe(self, state: Mapping[str, Any]) -> ViTConfig | None:
        p = ENCODER_PREFIX
        if f"{p}patch_embed.proj.weight" not in state:
            return None
        embed_dim = _shape(state, f"{p}patch_embed.proj.weight")[0]
        depth = len(_indices(state, f"{p}blocks."))
        head_dim = _shape(state, f"{p}blocks.0.attn.rel_pos_h")[1]
        window_table = 2 * self.WINDOW - 1
        global_blocks = tuple(
            i for i in range(depth) if _shape(state, f"{p}blocks.{i}.attn.rel_pos_h")[0] != window_table
        )
        return ViTConfig(int(embed_dim), depth, int(embed_dim // head_dim), global_blocks)

    def encoder_macs(self, config: ViTConfig) -> int:
        """As the official graph runs: windowed blocks pad the 64x64 grid to 70x70 (25 windows of
        14x14) before the qkv and output projections; attention products and the decomposed
        relative-position terms (q·R_h, q·R_w) are included; norms, softmax and GELU are not.
        vit_b: 486.0 GMAC (972 GFLOP), vit_l 1493, vit_h 2981."""
        dim, tokens = config.embed_dim, EMBED_SIZE * EMBED_SIZE
        macs = tokens * 3 * self.PATCH * self.PATCH * dim  # patch embedding (16x16 conv, stride 16)
        padded_side = math.ceil(EMBED_SIZE / self.WINDOW) * self.WINDOW
        for index in range(config.depth):
            if index in config.global_attn_indexes:
                side, windows = EMBED_SIZE, 1
            else:
                side, windows = self.WINDOW, (padded_side // self.WINDOW) ** 2
            attended = windows * side * side  # tokens the attention sees, padding included
            macs += attended * dim * 4 * dim  # qkv (3 D^2) and output projection (D^2)
            macs += windows * 2 * (side * side) ** 2 * dim  # q @ k^T and attn @ v, all heads
            macs += attended * dim * 2 * side  # decomposed relative position: q·R_h and q·R_w
            macs += tokens * dim * 8 * dim  # MLP, D -> 4D -> D
        return macs + _neck_macs(dim)

    def official_sam(self, config: ViTConfig, state_dict: Mapping | None = None) -> nn.Module:
        require("segment_anything", "bench")
        from segment_anything.build_sam import _build_sam

        model = _build_sam(
            encoder_embed_dim=config.embed_dim,
            encoder_depth=config.depth,
            encoder_num_heads=config.num_heads,
            encoder_global_attn_indexes=list(config.global_attn_indexes),
        )
        return _loaded_for_eval(model, state_dict)

    def randomize_(self, encoder: nn.Module) -> None:
        _perturb_parameters_(encoder, ("pos_embed", "rel_pos_h", "rel_pos_w"), 0.5,
                             lambda name: "norm" in name or "neck.1" in name or "neck.3" in name)


# -- TinyViT (MobileSAM) ------------------------------------------------------------------------


class TinyViTFamily(EncoderFamily):
    """TinyViT as MobileSAM uses it: conv stem, MBConv stage, three stages of windowed attention
    with a learned bias table per head, patch merging, SAM's neck."""

    name = "tiny_vit"
    config_type = TinyViTConfig
    attention_modes = ("plain", "fused-pattern", "onnx-attention")
    official_package = "mobile_sam"
    encoder_class = "samexport.models.tiny_vit:TinyViT"

    def build_encoder(self, config: TinyViTConfig) -> nn.Module:
        from samexport.models.tiny_vit import TinyViT

        return TinyViT(config)

    def describe(self, state: Mapping[str, Any]) -> TinyViTConfig | None:
        p = ENCODER_PREFIX
        if f"{p}patch_embed.seq.0.c.weight" not in state:
            return None
        layers = _indices(state, f"{p}layers.")
        if not layers:
            raise SamExportError("checkpoint has no complete TinyViT image encoder (no layers.*)")
        dims, depths, heads, windows = [], [], [], []
        for i in layers:
            layer = f"{p}layers.{i}."
            depths.append(len(_indices(state, f"{layer}blocks.")))
            if i == 0:  # MBConv stage
                dims.append(_shape(state, f"{layer}blocks.0.conv1.c.weight")[1])
                continue
            dims.append(_shape(state, f"{layer}blocks.0.attn.qkv.weight")[1])
            num_heads, table = _shape(state, f"{layer}blocks.0.attn.attention_biases")
            heads.append(num_heads)
            windows.append(math.isqrt(table))  # one bias per (|drow|, |dcol|): ws * ws entries
        # A merge's stride leaves no trace in the weights: MobileSAM's rule is stride 1 into the
        # last stage (the grid stays 64x64) and 2 elsewhere.
        strides = (2,) * (len(layers) - 2) + (1,)
        return TinyViTConfig(tuple(dims), tuple(depths), tuple(heads), tuple(windows), strides)

    def encoder_macs(self, config: TinyViTConfig) -> int:
        """Convolutions and matmuls as the graph runs them, windows padded to a multiple of the
        window side (the padded tokens are computed, as in the official model); norms, softmax,
        GELU and BatchNorm (folded at export) are not counted."""
        dims, sides = config.embed_dims, config.resolutions()
        stem = IMAGE_SIZE // 2
        macs = stem * stem * (dims[0] // 2) * 3 * 9  # 3x3 s2 conv, 3 -> C0/2
        macs += sides[0] ** 2 * dims[0] * (dims[0] // 2) * 9  # 3x3 s2 conv, C0/2 -> C0
        for stage, (dim, depth, side) in enumerate(zip(dims, config.depths, sides)):
            tokens = side * side
            if stage == 0:
                hidden = int(dim * config.mbconv_expand_ratio)
                macs += depth * tokens * (2 * dim * hidden + 9 * hidden)  # 1x1, dw 3x3, 1x1
            else:
                window = config.window_sizes[stage - 1]
                padded = math.ceil(side / window) * window
                attended, n = padded * padded, window * window
                hidden = int(dim * config.mlp_ratio)
                per_block = attended * dim * 4 * dim  # qkv and projection, padded tokens included
                per_block += attended * n * dim * 2  # q @ k^T and attn @ v, all heads
                per_block += tokens * dim * config.local_conv_size**2  # depthwise local conv
                per_block += tokens * dim * hidden * 2  # MLP
                macs += depth * per_block
            if stage < len(config.merge_strides):  # patch merging: 1x1, dw 3x3 (stride), 1x1
                out, out_side = dims[stage + 1], sides[stage + 1]
                macs += tokens * dim * out + out_side**2 * out * 9 + out_side**2 * out * out
        return macs + _neck_macs(dims[-1])

    def official_sam(self, config: TinyViTConfig, state_dict: Mapping | None = None) -> nn.Module:
        """``mobile_sam``'s model; its registry's ``vit_t`` builder for MobileSAM's own shape."""
        require("mobile_sam", "test")
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # timm registry and deprecation warnings on import
            import mobile_sam
        if config != MOBILE_SAM_TINY_VIT:
            raise SamExportError("the official mobile_sam package builds MobileSAM's TinyViT-5M only")
        return _loaded_for_eval(mobile_sam.sam_model_registry["vit_t"](), state_dict)

    def randomize_(self, encoder: nn.Module) -> None:
        import torch

        _perturb_parameters_(encoder, ("attention_biases",), 1.0,
                             lambda name: ".bn." in name or "norm" in name or name.startswith(("neck.1", "neck.3")))
        with torch.no_grad():
            for name, buffer in encoder.named_buffers():
                if name.endswith("running_mean"):
                    buffer.normal_(0.0, 0.1)
                elif name.endswith("running_var"):
                    buffer.uniform_(0.5, 1.5)

    def export_encoder_module(self, encoder: nn.Module) -> nn.Module:
        from samexport.models.tiny_vit import fold_batchnorms

        return fold_batchnorms(encoder)


def _neck_macs(in_dim: int) -> int:
    """SAM's neck on the 64x64 grid: 1x1 conv in_dim -> 256, 3x3 conv 256 -> 256."""
    tokens = EMBED_SIZE * EMBED_SIZE
    return tokens * in_dim * EMBED_DIM + tokens * EMBED_DIM * EMBED_DIM * 9


VIT = ViTFamily()
TINY_VIT = TinyViTFamily()
FAMILIES: dict[str, EncoderFamily] = {f.name: f for f in (VIT, TINY_VIT)}


def identify_family(state: Mapping[str, torch.Tensor]) -> tuple[EncoderFamily, Any] | None:
    """(family, config) of the encoder in ``state``, or ``None`` if no family knows its keys."""
    for family in FAMILIES.values():
        config = family.describe(state)
        if config is not None:
            return family, config
    return None


def family_of(encoder: nn.Module) -> EncoderFamily:
    """The family whose ``encoder_class`` ``encoder`` is an instance of."""
    name = f"{type(encoder).__module__}:{type(encoder).__qualname__}"
    for family in FAMILIES.values():
        if family.encoder_class == name:
            return family
    raise SamExportError(f"no encoder family knows {name}")
