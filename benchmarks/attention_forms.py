"""One attention core of the vit_b encoder on ONNX Runtime CPU, written in several graph forms.

    python benchmarks/attention_forms.py                   # a global block (64x64 tokens), 7 rounds
    python benchmarks/attention_forms.py --grid 14 --windows 25   # a windowed block

Issue 14 asks for the graph form of SAM's attention that ONNX Runtime's CPU provider runs fastest
with exact parity. Each form below takes what the block's ``qkv`` Linear makes (1 x N x 3 x heads
x D, N = grid^2, per window) and returns what its ``proj`` Linear takes (heads*D per token),
with the decomposed relative-position projections computed inside the graph:

- ``plain``, ``fused-pattern``, ``onnx-attention``: the encoder's ``--attention`` modes (their own
  cores, ``samexport.export.attention``).
- ``folded``: the bias folded into the logits MatMul. ``q . k * scale + rel_h[n, m // W] +
  rel_w[n, m % W]`` is one dot product of the queries extended by ``rel_h`` and ``rel_w`` with
  the keys extended by one-hot rows and columns of the key grid, so no N x N tensor is added to:
  one N x N MatMul with 2*grid more features per head instead of two N x N Adds.
- ``folded-mha``: the same extended queries and keys through ONNX Runtime's
  ``com.microsoft.MultiHeadAttention``, which its CPU provider runs with the tiled (flash)
  kernel of MLAS when there is no bias input: no N x N tensor at all. Takes q, k and v in the
  layout the Linear makes (no transposes).
- ``no-bias-mha``: MultiHeadAttention on q, k and v alone. Not SAM's attention (no bias): the
  floor of what that kernel does for this shape, for comparison.

Every form is checked against the torch model's formulation (what ``Attention.forward`` computes
with ``core = None``; ``tests/benchmarks/test_attention_forms.py`` checks the two agree); ``max_abs_error``
is recorded. The forms run round robin, ``--rounds`` times, so that a noisy
machine slows each alike; reported: median ms, median of the per-round ratios to ``plain``, and
GFLOP/s against the peak matmul rate measured in the same process (``bench.flops``). Writes
``benchmarks/results/attention-forms-vit_b-cpu.json`` (global) or ``...-window-cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
HEADS, HEAD_DIM = 12, 64  # vit_b
TORCH_FORMS = ("plain", "fused-pattern", "onnx-attention", "folded")
MHA_FORMS = ("folded-mha", "no-bias-mha")


def key_grid_one_hots(grid: int) -> torch.Tensor:
    """N x 2*grid: for key m, a one at its row ``m // grid`` and one at ``grid + m % grid``."""
    m = torch.arange(grid * grid)
    eye = torch.eye(grid)
    return torch.cat([eye[m // grid], eye[m % grid]], dim=1)


class Core(nn.Module):
    """qkv (windows x N x 3 x heads x D) -> the attention core's output in ``form``: windows x grid x
    grid x heads*D (the encoder's layout), or windows x N x heads*D from MultiHeadAttention."""

    def __init__(self, attn: nn.Module, form: str, grid: int) -> None:
        super().__init__()
        from samexport.export.attention import _CORES

        self.attn, self.form, self.grid = attn, form, grid
        self.core = _CORES.get(form)
        self.register_buffer("one_hots", key_grid_one_hots(grid), persistent=False)

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        from samexport.models.image_encoder import decomposed_rel_pos

        b, n, _, heads, d = qkv.shape
        if self.form in MHA_FORMS:
            return self.mha_inputs(qkv)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).reshape(3, b * heads, n, d).unbind(0)  # as the encoder
        if self.form == "plain":
            attn = (q * self.attn.scale) @ k.transpose(-2, -1) + self.attn.rel_pos_bias(q, self.grid, self.grid)
            out = attn.softmax(dim=-1) @ v
        elif self.form == "folded":
            rel_h, rel_w = decomposed_rel_pos(q, self.attn.rel_pos_h, self.attn.rel_pos_w, (self.grid, self.grid))
            queries = torch.cat([q * self.attn.scale, rel_h, rel_w], dim=-1)
            keys = torch.cat([k, self.one_hots.expand(b * heads, -1, -1)], dim=-1)
            out = (queries @ keys.transpose(-2, -1)).softmax(dim=-1) @ v
        else:
            out = self.core(self.attn, q, k, v, (self.grid, self.grid))
        g = self.grid  # back as the encoder does it (windows x grid x grid x heads*D)
        return out.view(b, heads, g, g, d).permute(0, 2, 3, 1, 4).reshape(b, g, g, heads * d)

    def mha_inputs(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys, values for MultiHeadAttention: windows x N x heads*D' each."""
        from samexport.models.image_encoder import decomposed_rel_pos

        b, n, _, heads, d = qkv.shape
        q, k, v = qkv.unbind(2)  # windows x N x heads x D, the Linear's own layout
        if self.form == "no-bias-mha":
            return (q * self.attn.scale).reshape(b, n, -1), k.reshape(b, n, -1), v.reshape(b, n, -1)
        heads_q = q.permute(0, 2, 1, 3).reshape(b * heads, n, d)  # the projections are per head
        rel_h, rel_w = decomposed_rel_pos(heads_q, self.attn.rel_pos_h, self.attn.rel_pos_w, (self.grid, self.grid))
        rel = torch.cat([rel_h, rel_w], dim=-1).reshape(b, heads, n, -1).permute(0, 2, 1, 3)
        queries = torch.cat([q * self.attn.scale, rel], dim=-1)
        keys = torch.cat([k, self.one_hots[None, :, None, :].expand(b, n, heads, -1)], dim=-1)
        return queries.reshape(b, n, -1), keys.reshape(b, n, -1), v.reshape(b, n, -1)


def export(core: Core, qkv: torch.Tensor, path: Path) -> None:
    """Export the form; for the MultiHeadAttention forms, export its inputs and add the node."""
    import onnx
    from onnx import helper

    opset = 23 if core.form == "onnx-attention" else 18
    outputs = ["q", "k", "v"] if core.form in MHA_FORMS else ["out"]
    with torch.no_grad():  # as samexport's exports (SDPA's output layout differs under autograd)
        torch.onnx.export(core, (qkv,), str(path), input_names=["qkv"], output_names=outputs, dynamo=True,
                          opset_version=opset, verbose=False)
    if core.form not in MHA_FORMS:
        return
    model = onnx.load(str(path))
    # scale 1: the queries are scaled in the graph (the one-hot features must not be)
    model.graph.node.append(helper.make_node("MultiHeadAttention", outputs, ["out"], domain="com.microsoft",
                                             num_heads=HEADS, scale=1.0))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, None))
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(path))


def random_block(grid: int, windows: int) -> tuple[nn.Module, torch.Tensor, np.ndarray]:
    """A seeded vit_b ``Attention`` with non-zero rel-pos tables, a qkv input, and the ``plain``
    output for it (the torch model's formulation)."""
    from samexport.models.image_encoder import Attention

    torch.manual_seed(0)
    attn = Attention(HEADS * HEAD_DIM, num_heads=HEADS, grid_size=grid).eval()
    with torch.no_grad():
        for table in (attn.rel_pos_h, attn.rel_pos_w):
            table.normal_(0, 0.5)
        qkv = torch.randn(windows, grid * grid, 3, HEADS, HEAD_DIM)
        return attn, qkv, Core(attn, "plain", grid)(qkv).numpy()


def attention_gflop(windows: int, grid: int) -> float:
    """The two N x N products per head (the bias projections and the Softmax not counted)."""
    n = grid * grid
    return 2 * 2 * windows * HEADS * n * n * HEAD_DIM / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=int, default=64, help="tokens per side: 64 global, 14 windowed")
    parser.add_argument("--windows", type=int, default=1, help="windows per image: 1 global, 25 windowed")
    parser.add_argument("--forms", nargs="+", default=[*TORCH_FORMS, *MHA_FORMS])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: ONNX Runtime's)")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    unknown = set(args.forms) - {*TORCH_FORMS, *MHA_FORMS}
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1; got {args.rounds}")
    if unknown or args.forms[0] != "plain":
        parser.error(f"forms are {', '.join((*TORCH_FORMS, *MHA_FORMS))}, plain first; got {args.forms}")

    import onnxruntime as ort

    from samexport.bench.flops import measure_peak_matmul

    attn, qkv, reference = random_block(args.grid, args.windows)
    feed = {"qkv": qkv.numpy()}
    options = ort.SessionOptions()
    if args.threads:
        options.intra_op_num_threads = args.threads

    sessions, errors = {}, {}
    with tempfile.TemporaryDirectory() as folder:
        for form in args.forms:
            path = Path(folder) / f"{form}.onnx"
            export(Core(attn, form, args.grid).eval(), qkv, path)
            sessions[form] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            out = sessions[form].run(None, feed)[0]  # also the warm-up
            errors[form] = float(np.abs(out.reshape(reference.shape) - reference).max())
            print(f"{form}: max abs error {errors[form]:.2e} against the torch attention", flush=True)

    peak = measure_peak_matmul()
    seconds: dict[str, list[float]] = {form: [] for form in args.forms}
    for round_ in range(-1, args.rounds):  # round -1 warms up again after the peak measurement
        for form in args.forms:
            start = time.perf_counter()
            sessions[form].run(None, feed)
            if round_ >= 0:
                seconds[form].append(time.perf_counter() - start)
        if round_ < 0:
            continue
        print(f"round {round_ + 1}: " + ", ".join(f"{f} {s[-1] * 1e3:.0f} ms" for f, s in seconds.items()), flush=True)

    gflop = attention_gflop(args.windows, args.grid)
    results = {}
    for form in args.forms:
        median = statistics.median(seconds[form])
        results[form] = {
            "median_ms": median * 1e3,
            "ratio_to_plain_median": statistics.median(t / p for t, p in zip(seconds[form], seconds["plain"])),
            "gflops": gflop / median,
            "fraction_of_peak": gflop / median / peak["gflops"],
            "max_abs_error": errors[form],
            "exact_attention": form != "no-bias-mha",
            "seconds": seconds[form],
        }
        print(f"{form:15s} {median * 1e3:7.1f} ms  {results[form]['ratio_to_plain_median']:.2f}x plain's time  "
              f"{results[form]['fraction_of_peak']:.0%} of peak", flush=True)
    scope = "global" if args.windows == 1 else "window"
    output = args.output or ROOT / f"benchmarks/results/attention-forms-vit_b-{scope}-cpu.json"
    record = {
        "command": "python benchmarks/attention_forms.py " + " ".join(
            ["--grid", str(args.grid), "--windows", str(args.windows), "--rounds", str(args.rounds)]
            + (["--threads", str(args.threads)] if args.threads else [])),
        "shape": {"windows": args.windows, "tokens": args.grid**2, "heads": HEADS, "head_dim": HEAD_DIM},
        "attention_gflop": gflop,
        "peak_matmul": peak,
        "machine": {"platform": platform.platform(), "loadavg_at_end": list(os.getloadavg())},
        "onnxruntime": ort.__version__,
        "forms": results,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
