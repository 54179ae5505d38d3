"""Checkpoint (.pth) -> torch SAM model, with errors that say what was expected and found."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from samexport.errors import SamExportError, require
from samexport.models.families import FAMILIES, identify_family
from samexport.variants import VARIANTS, Variant, get_variant

if TYPE_CHECKING:
    import torch

    from samexport.models import Sam

SECTIONS = ("image_encoder.", "prompt_encoder.", "mask_decoder.")


def load_checkpoint_file(path: Path | str, official_form: str) -> object:
    """``torch.load`` of a checkpoint file (on the CPU, tensors and plain containers only), with a
    clear error for a missing, truncated or foreign file; ``official_form`` ends that error (what
    the official checkpoints are, e.g. "Official SAM checkpoints are PyTorch .pth state dicts.")."""
    torch = require("torch", "torch")
    path = Path(path)
    if not path.is_file():
        raise SamExportError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise SamExportError(
            f"could not read checkpoint {path}: {type(exc).__name__}: {exc}. Is the file complete? {official_form}"
        ) from exc


def read_state_dict(path: Path | str) -> dict[str, torch.Tensor]:
    """Load an official-format checkpoint: a plain state dict with ``image_encoder.*`` etc. keys."""
    state = load_checkpoint_file(path, "Official SAM checkpoints are PyTorch .pth state dicts.")
    if not isinstance(state, dict) or not state:
        raise SamExportError(f"checkpoint {path} is not a state dict (found {type(state).__name__})")
    unknown = sorted(k for k in state if not str(k).startswith(SECTIONS))
    if unknown:
        raise SamExportError(
            f"checkpoint {path} is not a SAM checkpoint: unexpected keys such as {unknown[:3]}; "
            "expected keys starting with " + ", ".join(SECTIONS)
        )
    check_finite(state, source=str(path))
    return state


def check_finite(state: dict[str, torch.Tensor], *, source: str) -> None:
    """Refuse a state dict with NaN or infinite weights, naming the first such tensor (in the
    file's order): they would surface much later as NaN masks or a failed parity check.

    Raises:
        SamExportError: a floating-point tensor holds NaN or infinite values.
    """
    torch = require("torch", "torch")
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            continue
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            bad = tensor[~finite]
            nan = int(torch.isnan(bad).sum())
            raise SamExportError(
                f"checkpoint {source}: tensor {name!r} {tuple(tensor.shape)} has {nan} NaN and "
                f"{bad.numel() - nan} infinite values (of {tensor.numel()}); the file is damaged or "
                "the training diverged"
            )


def describe_encoder(state: dict[str, torch.Tensor]) -> dict:
    """The image encoder read off a state dict's shapes: ``{"family": name, **config fields}``.

    Raises:
        SamExportError: no encoder family knows the ``image_encoder.*`` keys, or an encoder of a
            known family has parts missing.
    """
    from dataclasses import asdict

    found = identify_family(state)
    if found is None:
        sample = sorted(k for k in state if k.startswith("image_encoder."))[:3]
        raise SamExportError(
            f"checkpoint has no image encoder of a known family ({', '.join(FAMILIES)}); "
            f"its image_encoder keys start with {sample}"
        )
    family, config = found
    return {"family": family.name, **asdict(config)}


def identify_variant(state: dict[str, torch.Tensor]) -> Variant | None:
    """The registered variant whose encoder family and shape match the state dict, or ``None``."""
    found = identify_family(state)
    if found is None:
        return None
    family, config = found
    for variant in VARIANTS.values():
        if variant.family is family and variant.encoder == config:
            return variant
    return None


def load_sam(checkpoint: Path | str, variant: Variant | str) -> Sam:
    """Build the ``variant`` architecture and load ``checkpoint`` into it, in eval mode on CPU.

    Raises:
        SamExportError: unreadable file, not a SAM checkpoint, or a checkpoint of another variant
            (the message names the variant it looks like).
    """
    variant = get_variant(variant)
    state = read_state_dict(checkpoint)
    found = identify_variant(state)
    if found is None or found.name != variant.name:
        looks_like = f"looks like {found.name}" if found else f"has encoder {describe_encoder(state)}"
        raise SamExportError(
            f"checkpoint {checkpoint} {looks_like}, but variant {variant.name} was requested "
            f"({variant.family.name} encoder {variant.encoder}); pass the matching --variant"
        )
    return load_weights(variant.build(), state, checkpoint=checkpoint, name=variant.name)


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], *, checkpoint: object, name: str):
    """Load ``state`` into the freshly built ``model`` (variant ``name``) and return it in eval
    mode; every tensor must fit: a shape mismatch, a missing or an unexpected key is an error
    naming ``checkpoint`` and the first keys."""
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch
        raise SamExportError(f"checkpoint {checkpoint} does not fit {name}: {exc}") from exc
    if missing or unexpected:
        raise SamExportError(
            f"checkpoint {checkpoint} does not fit {name}: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    return model.eval()
