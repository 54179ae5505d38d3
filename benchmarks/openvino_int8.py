"""INT8 encoder graphs on OpenVINO, one per recipe from the same calibration ranges: speed (round
robin, against ONNX Runtime fp32 on the fp32 graph) and embedding cosine against the fp32 graph.

    python benchmarks/openvino_int8.py W/mobile_sam-fp32/encoder.onnx \
        ~/.cache/samexport/calibration/mobile_sam-<sha>-onnxruntime.json CALIB_DIR OUT --family tiny_vit --rounds 5

RANGES_JSON is the calibration cache an ``--int8 --int8-for onnxruntime`` build of the same
checkpoint wrote (its ranges cover the inputs and outputs of every quantized node, so every recipe
here reuses them). Recipes: ``ort7`` (``--int8-for onnxruntime``), ``ort8`` (the same with 8-bit
weights), ``in8`` (inputs only, 8-bit, FP32 graph: ``--int8-for openvino``), ``trt``
(``--int8-for tensorrt``, FP16 Q/DQ), and ``nncf`` (NNCF's post-training quantization of the fp32
graph through OpenVINO, ``ModelType.TRANSFORMER``: SmoothQuant, on the same images; needs
``pip install nncf``). ``--family tiny_vit`` keeps TinyViT's last 6 nodes in float in all four
samexport recipes (the ranges of the onnxruntime build lack them). Each graph runs on OpenVINO CPU
with the f32 and bf16 hints; ONNX Runtime runs the fp32 and ``ort7`` graphs. Prints a table and
writes OUT/results.json. Measured results: docs/openvino.md, "INT8".
"""
import argparse
import json
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from samexport.precision import calibration as c
from samexport.precision import int8 as q
from samexport.precision.recipes import RECIPES, TINY_VIT_ONNXRUNTIME_FLOAT_TAIL
from samexport.transforms import preprocess

p = argparse.ArgumentParser()
p.add_argument("fp32")
p.add_argument("ranges")
p.add_argument("calib")
p.add_argument("out", type=Path)
p.add_argument("--family", default="")
p.add_argument("--rounds", type=int, default=3)
p.add_argument("--skip-build", action="store_true")
p.add_argument("--only", default="")
p.add_argument("--hints", default="f32,bf16")
a = p.parse_args()
a.out.mkdir(parents=True, exist_ok=True)
ranges = json.loads(Path(a.ranges).read_text())["ranges"]
tail = TINY_VIT_ONNXRUNTIME_FLOAT_TAIL if a.family == "tiny_vit" else 0
base = RECIPES["onnxruntime"]
recipes = {
    "ort7": replace(base, float_tail=tail),                          # today's --int8-for onnxruntime
    "ort8": replace(base, reduce_range=False, float_tail=tail),      # same, 8-bit weights (VNNI)
    "in8": replace(RECIPES["tensorrt"], fp16=False, float_tail=tail),               # inputs only, fp32 scales
    "trt": replace(RECIPES["tensorrt"], float_tail=tail),                                   # --int8-for tensorrt (fp16 Q/DQ)
}
t0 = time.time()
if not a.skip_build:
    import onnx
    model = onnx.load(a.fp32, load_external_data=False)
    for name, recipe in recipes.items():
        dst = a.out / f"enc-{name}.onnx"
        if dst.exists():
            continue
        need = q.calibrated_tensors(model, recipe)
        missing = [t for t in need if t not in ranges]
        assert not missing, (name, missing[:3])
        sub = {t: ranges[t] for t in need}
        if recipe.fp16:
            import tempfile
            with tempfile.TemporaryDirectory() as tmp:
                qq = q.quantize_with_ranges(a.fp32, Path(tmp) / "q.onnx", sub, recipe)
                q.qdq_to_fp16(qq, dst)
        else:
            q.quantize_with_ranges(a.fp32, dst, sub, recipe)
        print("built", name, round(time.time() - t0), "s", flush=True)
    nncf_path = a.out / "enc-nncf.xml"
    if not nncf_path.exists():
        import nncf
        import openvino as ov
        images = c.list_images(a.calib)
        feeds = list(c.encoder_feeds(images))
        t1 = time.time()
        ov_model = ov.Core().read_model(a.fp32)
        quant = nncf.quantize(ov_model, nncf.Dataset(feeds, lambda f: f["image"]),
                              model_type=nncf.ModelType.TRANSFORMER, subset_size=len(feeds))
        ov.save_model(quant, str(nncf_path), compress_to_fp16=False)
        print("built nncf", round(time.time() - t1), "s", flush=True)

import onnxruntime as ort  # noqa: E402 (after the graphs are built)
import openvino as ov  # noqa: E402
from skimage import data  # noqa: E402

core = ov.Core()
tests = [preprocess(data.astronaut()), preprocess(np.asarray(data.coffee()))]
bench = tests[1]
graphs = {"fp32": a.fp32, **{n: str(a.out / f"enc-{n}.onnx") for n in recipes}, "nncf": str(a.out / "enc-nncf.xml")}
if a.only:
    graphs = {k: v for k, v in graphs.items() if k in a.only.split(",") or k == "fp32"}
runners = {}
opts = ort.SessionOptions()
s = ort.InferenceSession(a.fp32, opts, providers=["CPUExecutionProvider"])
runners["ort fp32"] = lambda x, s=s: s.run(None, {"image": x})[0]
if "ort7" in graphs:
    s7 = ort.InferenceSession(graphs["ort7"], opts, providers=["CPUExecutionProvider"])
    runners["ort ort7"] = lambda x, s=s7: s.run(None, {"image": x})[0]
for name, path in graphs.items():
    for hint in a.hints.split(","):
        c = core.compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": hint})
        r = c.create_infer_request()
        runners[f"ov {name} {hint}"] = lambda x, r=r: r.infer({0: x}, share_outputs=False)[0]
print("compiled", len(runners), flush=True)
ref = [runners["ov fp32 f32"](x) for x in tests]
acc = {}
for label, run in runners.items():
    outs = [run(x) for x in tests]
    cos = [float(np.dot(o.ravel().astype(np.float64), r.ravel()) / np.linalg.norm(o) / np.linalg.norm(r)) for o, r in zip(outs, ref)]
    rel = [float(np.abs(o - r).max() / np.abs(r).max()) for o, r in zip(outs, ref)]
    acc[label] = {"cosine_min": round(min(cos), 6), "rel_max": round(max(rel), 4)}
times = {k: [] for k in runners}
load0 = os.getloadavg()
for rnd in range(a.rounds):
    for label, run in runners.items():
        st = time.perf_counter()
        run(bench)
        times[label].append(time.perf_counter() - st)
    print("round", rnd + 1, flush=True)
load1 = os.getloadavg()
basel = times["ort fp32"]
rows = []
for label in runners:
    ratio = statistics.median([b / t for b, t in zip(basel, times[label])])
    rows.append({"run": label, "median_ms": round(statistics.median(times[label]) * 1e3, 1), "speedup_vs_ort_fp32": round(ratio, 2), **acc[label]})
    print(f"{label:22s} {rows[-1]['median_ms']:9.1f} ms  {ratio:5.2f}x  cos {acc[label]['cosine_min']:.6f} rel {acc[label]['rel_max']:.4f}")
print("load", load0, load1)
(a.out / "results.json").write_text(json.dumps({"rows": rows, "load": [load0, load1], "rounds": a.rounds}, indent=1))
