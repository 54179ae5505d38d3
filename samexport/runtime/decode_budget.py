"""How many prompts one decoder call may take: the decoder's memory per prompt, measured, and the
budget arithmetic ``SamPredictor(decode_budget_bytes=...)`` and the mask generator chunk by."""

from __future__ import annotations

# Memory a decoder call adds (RSS high-water growth, ONNX Runtime CPU fp32, boxes on a 300x400
# image, multimask, upsampled masks; benchmarks/decode_memory.py): 409 MiB for chunks of 8 prompts,
# 1031 MiB for 24, 1962 MiB for 43, outputs excluded: ~39 MiB per prompt (the upscaled 256x256x32
# features and their neighbours) over ~100 MiB, and ONNX Runtime's arena grows in steps, so the
# larger chunks cost up to ~44 MiB per prompt. A call gets (budget - fixed) // per-prompt prompts,
# rounded so that a budget is an upper bound on what the decoder calls add (tests/runtime/test_predictor_budget.py).
DECODER_BYTES_PER_PROMPT = 44 << 20
DECODER_FIXED_BYTES = 256 << 20
DEFAULT_DECODE_BUDGET = 2 << 30  # 2 GiB: 40 prompts per decoder call at most


def prompts_per_call(budget_bytes: int, bytes_per_prompt: int = DECODER_BYTES_PER_PROMPT) -> int:
    """Most prompts one decoder call may take within ``budget_bytes`` (``bytes_per_prompt`` each
    over ``DECODER_FIXED_BYTES``): at least 1, so a budget under 300 MiB decodes one prompt at a
    time and is not met."""
    return max(1, (budget_bytes - DECODER_FIXED_BYTES) // bytes_per_prompt)


def budget_for_prompts(prompts: int) -> int:
    """The smallest ``decode_budget_bytes`` that lets one decoder call take ``prompts`` prompts."""
    return DECODER_FIXED_BYTES + prompts * DECODER_BYTES_PER_PROMPT
