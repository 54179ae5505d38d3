"""Benchmark results (the dict from ``run_benchmark``) -> targets, Markdown tables and a PNG plot.

Everything here reads the JSON-ready dict only, so a results file can be re-rendered later with
:func:`render_results` without running anything.
"""

from __future__ import annotations

import json
from pathlib import Path

from samexport.errors import SamExportError, require

STAGE_LABELS: dict[str, str] = {
    "preprocess": "preprocess (resize, normalise, pad)",
    "encoder": "encoder",
    "decoder_point": "decoder, 1 point",
    "decoder_box_point": "decoder, box + point",
    "decoder_10_points": "decoder, 10 points",
    "decoder_mask_input": "decoder, point + mask input",
    "decoder_boxes": "",  # decoder_boxes_<n>: see stage_label; placed here in tables and plots
    "postprocess_1_mask": "postprocess 1 mask to original size",
    "postprocess_3_masks": "postprocess 3 masks to original size",
    "predict_point": "predict 1 point: decoder + 3 masks to original size",
    "predict_point_single": "predict 1 point: decoder + 1 mask to original size",
    "official_decoder_4_masks": "official-recipe decoder, 4 masks in-graph upsampled",
    "official_decoder_best_mask": "official-recipe decoder, best mask in-graph upsampled",
}
TARGETS = {
    "peer_ratio": 0.5,  # ours / official recipe, at most
    "batch_speedup": 1.5,  # per-prompt speedup of 64 boxes in one call, at least
    "encoder_fraction": 0.65,  # of measured peak matmul FLOP/s, at least (ORT CPU fp32)
    "int8_speedup": 1.5,  # encoder int8 vs fp32 (ORT CPU), at least
}


def stage_label(stage: str) -> str:
    """Human-readable name of a stage key."""
    if stage.startswith("decoder_boxes_"):
        count = int(stage.rsplit("_", 1)[1])
        return "decoder, 1 box" if count == 1 else f"decoder, {count} boxes (one call)"
    return STAGE_LABELS[stage]


def stage_order(keys) -> list[str]:
    """Stage keys in pipeline order, batch stages by size where ``decoder_boxes`` stands."""
    keys = set(keys)
    boxes = sorted((k for k in keys if k.startswith("decoder_boxes_")), key=lambda k: int(k.rsplit("_", 1)[1]))
    order = []
    for stage in STAGE_LABELS:
        order += boxes if stage == "decoder_boxes" else [stage] if stage in keys else []
    return order


def _largest_batch(stages: dict) -> str:
    return stage_order(k for k in stages if k.startswith("decoder_boxes_"))[-1]


def _backend(results: dict, kind: str, precision: str) -> dict | None:
    return next(
        (b for b in results["backends"]
         if b["kind"] == kind and b.get("precision") == precision and "stages" in b),
        None,
    )


def peer_ratios(results: dict) -> dict[str, dict[str, float]]:
    """Per backend: our ``predict_point`` time over the official recipe's, multi and single mask."""
    peer = results["peer_baseline"]["stages"]
    ratios = {}
    for backend in results["backends"]:
        stages = backend.get("stages", {})
        if "predict_point" in stages:
            ratios[backend["label"]] = {
                "multimask_vs_official_4_masks": round(
                    stages["predict_point"]["median_ms"] / peer["official_decoder_4_masks"]["median_ms"], 3
                ),
                "single_vs_official_best_mask": round(
                    stages["predict_point_single"]["median_ms"]
                    / peer["official_decoder_best_mask"]["median_ms"], 3
                ),
            }
    return ratios


def batch_speedup(backend: dict) -> tuple[int, float]:
    """(n, per-prompt time of 1 box per call over that of n boxes in one call), n the largest batch."""
    stages = backend["stages"]
    largest = _largest_batch(stages)
    speedup = stages["decoder_boxes_1"]["median_ms"] / stages[largest].get("per_item_ms", stages[largest]["median_ms"])
    return int(largest.rsplit("_", 1)[1]), speedup


def evaluate_targets(results: dict) -> list[dict]:
    """The issue's CPU targets: value, target, and ``met`` (None when not measured, with why)."""
    fp32 = _backend(results, "onnxruntime-cpu", "fp32")
    int8 = _backend(results, "onnxruntime-cpu", "int8")
    peer = results.get("peer_baseline") or {}
    size = "x".join(str(s) for s in peer.get("image_size", [])) or "?"
    targets = []

    def add(name: str, bound: str, limit: float, value: float | None, missing: str) -> None:
        met = None if value is None else (value <= limit if bound == "<=" else value >= limit)
        targets.append({
            "name": name, "target": f"{bound} {limit}", "value": None if value is None else round(value, 3),
            "met": met, **({"not_measured": missing} if value is None else {}),
        })

    ratio = None
    if fp32 and "ratios" in peer and fp32["label"] in peer["ratios"]:
        ratio = peer["ratios"][fp32["label"]]["multimask_vs_official_4_masks"]
    add(f"decoder + postprocessing to {size} vs official-recipe decoder (ORT CPU fp32, time ratio)",
        "<=", TARGETS["peer_ratio"], ratio, "needs onnxruntime-cpu fp32 and the peer baseline")
    count, speedup = batch_speedup(fp32) if fp32 else (64, None)
    add(f"{count} boxes in one call vs {count} single calls, per-prompt speedup (ORT CPU fp32)",
        ">=", TARGETS["batch_speedup"], speedup if count == 64 else None,
        f"needs onnxruntime-cpu fp32 and batch size 64 (largest measured: {count})")
    add("encoder fp32 on ORT CPU, fraction of measured peak matmul FLOP/s",
        ">=", TARGETS["encoder_fraction"], fp32["encoder"]["fraction_of_peak"] if fp32 else None,
        "needs onnxruntime-cpu fp32")
    speedup = None
    if fp32 and int8:
        speedup = fp32["stages"]["encoder"]["median_ms"] / int8["stages"]["encoder"]["median_ms"]
    add("encoder int8 vs fp32 on ORT CPU, speedup", ">=", TARGETS["int8_speedup"], speedup,
        "needs an int8 artifact directory")
    return targets


def _cell(timing: dict | None, per_item: bool = False) -> str:
    if timing is None:
        return ""
    if per_item and "per_item_ms" in timing:
        return f"{timing['median_ms']:.1f} ({timing['per_item_ms']:.1f}/prompt)"
    return f"{timing['median_ms']:.1f} ({timing['min_ms']:.1f}–{timing['max_ms']:.1f})"


def to_markdown(results: dict, *, title: str = "samexport benchmark") -> str:
    """The results as Markdown: note, setup, stage latency table, encoder throughput, batching,
    peer baseline, targets, skipped backends."""
    ran = [b for b in results["backends"] if "stages" in b]
    skipped = [b for b in results["backends"] if "skipped" in b]
    machine, config = results["machine"], results["config"]
    images = ", ".join(f"{i['name']} ({i['size'][0]}x{i['size'][1]})" for i in config["images"])
    lines = [f"# {title}", ""]
    if results.get("note"):
        lines += [results["note"].strip(), ""]
    lines += [
        f"- model: {results['model']['variant']}, artifacts {', '.join(results['model']['artifacts'])}",
        (
            f"- machine: {machine['cpu']}, {machine['logical_cores']} logical cores, {machine['platform']}; "
            f"load average before/after {machine.get('load_average_before')} / {machine.get('load_average_after')}"
        ),
        (
            f"- peak float32 matmul ({results['peak_matmul']['size']:.0f}²): "
            f"{results['peak_matmul']['gflops']:.0f} GFLOP/s"
        ),
        f"- images: {images}; {config['runs']} timed runs after {config['warmup']} warm-up per stage",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items()),
    ]
    if results.get("command"):
        lines.append(f"- command: `{results['command']}`")
    lines += ["", "## Latency per stage", "",
              "Median ms per call (min–max); batched stages also per prompt.", ""]
    columns = ["shared (NumPy)"] + [b["label"] for b in ran]
    lines += ["| stage | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    shared = results["shared_stages"]
    for stage in stage_order([*shared, *(k for b in ran for k in b["stages"])]):
        cells = [_cell(shared.get(stage))] + [_cell(b["stages"].get(stage), True) for b in ran]
        lines.append(f"| {stage_label(stage)} | " + " | ".join(cells) + " |")

    lines += ["", "## Encoder throughput", "",
              "| backend | median s | GFLOP/s | of peak |", "|---|---|---|---|"]
    for b in ran:
        enc = b["encoder"]
        lines.append(f"| {b['label']} | {b['stages']['encoder']['median_ms'] / 1e3:.2f} | "
                     f"{enc['gflops']:.0f} | {100 * enc['fraction_of_peak']:.0f}% |")

    sizes = results["config"].get("batch_sizes", [1, 16, 64])
    lines += ["", "## Batching boxes", "", "Median ms per prompt.", "",
              "| backend | " + " | ".join(f"{n} per call" for n in sizes) + " | speedup |",
              "|---" * (len(sizes) + 2) + "|"]
    for b in ran:
        s = b["stages"]
        cells = [f"{s[f'decoder_boxes_{n}'].get('per_item_ms', s[f'decoder_boxes_{n}']['median_ms']):.1f}"
                 for n in sizes]
        count, speedup = batch_speedup(b)
        lines.append(f"| {b['label']} | " + " | ".join(cells) + f" | {speedup:.2f}x ({count} vs 1) |")

    peer = results.get("peer_baseline")
    if peer and "stages" in peer:
        size = "x".join(map(str, peer["image_size"]))
        lines += ["", f"## Peer baseline: official recipe, one point, masks at {size}", "",
                  f"{peer['recipe']}; weights: {peer['weights']}.", "",
                  "| decoder | median ms | ratio to official |", "|---|---|---|"]
        for stage, timing in peer["stages"].items():
            lines.append(f"| {stage_label(stage)} | {_cell(timing)} | 1 |")
        for label, ratio in peer.get("ratios", {}).items():
            s = next(b for b in ran if b["label"] == label)["stages"]
            lines.append(f"| {label}: predict, 3 masks | {_cell(s['predict_point'])} | "
                         f"{ratio['multimask_vs_official_4_masks']:.2f} |")
            lines.append(f"| {label}: predict, 1 mask | {_cell(s['predict_point_single'])} | "
                         f"{ratio['single_vs_official_best_mask']:.2f} |")
    elif peer:
        lines += ["", f"Peer baseline skipped: {peer.get('skipped')}"]

    lines += ["", "## Targets", "", "| target | value | bound | met |", "|---|---|---|---|"]
    for t in results.get("targets", []):
        met = {True: "yes", False: "**no**", None: f"not measured ({t.get('not_measured')})"}[t["met"]]
        value = "" if t["value"] is None else f"{t['value']:g}"
        lines.append(f"| {t['name']} | {value} | {t['target']} | {met} |")
    if skipped:
        lines += ["", "## Skipped backends", ""]
        lines += [f"- {b['label']}: {b['skipped']}" for b in skipped]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path | str, *, title: str = "samexport latency per stage") -> Path:
    """Horizontal bars of median latency per stage (log scale), one colour per backend."""
    matplotlib = require("matplotlib", "bench")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, dict[str, float]] = {}
    series["shared (NumPy)"] = {k: v["median_ms"] for k, v in results["shared_stages"].items()}
    for b in results["backends"]:
        if "stages" in b:
            series[b["label"]] = {k: v["median_ms"] for k, v in b["stages"].items()}
    peer = results.get("peer_baseline") or {}
    if "stages" in peer:
        series["official recipe (ORT CPU)"] = {k: v["median_ms"] for k, v in peer["stages"].items()}
    stages = stage_order(k for values in series.values() for k in values)
    colours = {name: f"C{i}" for i, name in enumerate(series)}
    bars = sum(stage in values for stage in stages for values in series.values())
    fig, ax = plt.subplots(figsize=(11, 0.28 * bars + 0.3 * len(stages) + 1.5))
    position, ticks, labelled = 0.0, [], set()
    for stage in stages:  # one bar per backend that has the stage, no empty slots
        first = position
        for name, values in series.items():
            if stage in values:
                ax.barh(position, values[stage], 0.85, color=colours[name],
                        label=None if name in labelled else name)
                labelled.add(name)
                position += 1
        ticks.append((first + position - 1) / 2)
        position += 0.7
    ax.set_yticks(ticks)
    ax.set_yticklabels([stage_label(s) for s in stages], fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("median latency per call, ms (log scale)")
    ax.set_title(f"{title}\n{results['model']['variant']}, {results['machine']['cpu']}", fontsize=10)
    ax.grid(axis="x", which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render_results(json_path: Path | str, *, markdown: Path | str | None = None,
                   png: Path | str | None = None) -> None:
    """Re-render the Markdown and/or PNG of a results file written by ``samexport bench --json``."""
    path = Path(json_path)
    try:
        results = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SamExportError(f"cannot read benchmark results {path}: {exc}") from exc
    if markdown:
        Path(markdown).write_text(to_markdown(results))
    if png:
        plot(results, png)
