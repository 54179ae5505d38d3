"""Every TensorRT name samexport uses exists in the releases it supports, or is guarded.

The names come from NVIDIA's ``tensorrt-cu12-bindings`` wheels of 10.3.0 (JetPack 6), 10.16.1.11
and 11.4.0.106 (see ``tests/support/trt_bindings.py``: C string literals of the compiled module, Python names of
its ``__init__.py`` and of ``tensorrt.plugin``). The table they are checked against is
``samexport.engines.trt_api.API``; a scan of the TensorRT code keeps the table complete.
"""

from __future__ import annotations

import ast
import functools
import re
import warnings
from pathlib import Path

import pytest
from support import trt_bindings

from samexport.engines import trt_api

RELEASES = ("10.3", "10.16", "11.4")
ROOT = Path(__file__).resolve().parents[2]
# The modules that call TensorRT directly.
SOURCES = [
    *sorted((ROOT / "samexport" / "engines").glob("*.py")),
    ROOT / "samexport" / "runtime" / "tensorrt_backend.py",
    ROOT / "samexport" / "plugins" / "tensorrt_plugin.py",
    ROOT / "samexport" / "doctor.py",
]
_CACHE: dict[str, trt_bindings.ExportedNames] = {}


def names(release: str) -> trt_bindings.ExportedNames:
    if release not in _CACHE:
        try:
            _CACHE[release] = trt_bindings.exported_names(release)
        except trt_bindings.BindingsUnavailable as exc:
            pytest.skip(str(exc))
    return _CACHE[release]


@functools.cache
def plugin_names(release: str) -> frozenset[str]:
    """Public names of the release's ``tensorrt.plugin`` (decorated with ``@public_api``); empty
    when the release has no such package."""
    folder = trt_bindings.bindings_dir(release) / "plugin"
    found: set[str] = set()
    for path in folder.glob("*.py"):
        with warnings.catch_warnings():  # NVIDIA's docstrings have invalid escapes
            warnings.simplefilter("ignore")
            tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and any(
                "public_api" in ast.unparse(d) for d in node.decorator_list
            ):
                found.add(node.name)
    return frozenset(found)


def present(release: str, name: str) -> bool:
    if name.startswith("plugin."):
        return name.removeprefix("plugin.") in plugin_names(release)
    return all(part in names(release) for part in name.split("."))


def first_release_of(name: str) -> tuple[int, int]:
    return trt_api.API[name] or trt_api.OLDEST_SUPPORTED


# --- The extraction itself can tell releases apart ---------------------------------------------


@pytest.mark.network
def test_extraction_finds_known_names_and_not_made_up_ones():
    for release in RELEASES:
        found = names(release)
        for known in ("Builder", "BuilderFlag", "VERSION_COMPATIBLE", "set_memory_pool_limit", "nptype"):
            assert known in found, (release, known)
        for made_up in ("FP64_LAYER_SELECTION", "set_memory_pool_limit_v7", "HardwareCompatibilityLevel_X", "nptype2"):
            assert made_up not in found, (release, made_up)
    assert "SAME_COMPUTE_CAPABILITY" not in names("10.3") and "SAME_COMPUTE_CAPABILITY" in names("10.16")
    assert "aot_impl" not in plugin_names("10.3") and "aot_impl" in plugin_names("10.16")


# --- The table against the bindings --------------------------------------------------------------


@pytest.mark.network
@pytest.mark.parametrize("release", RELEASES)
def test_every_entry_exists_from_its_first_release(release):
    """Present in every release from its first one on (so no call can raise AttributeError there)."""
    due = [name for name in trt_api.API if trt_api.release(trt_bindings.RELEASES[release]) >= first_release_of(name)]
    missing = [name for name in due if not present(release, name)]
    assert not missing, f"TensorRT {trt_bindings.RELEASES[release]} lacks {missing}"


@pytest.mark.network
def test_entries_with_a_later_first_release_are_absent_from_10_3():
    """A first release above 10.3 is real: 10.3 lacks the name, so code using it must be guarded."""
    later = {name: first for name, first in trt_api.API.items() if first is not None and first > (10, 3)}
    assert later  # SAME_COMPUTE_CAPABILITY, the plugin API
    # For "Enum.MEMBER" the member itself must be missing (the enum may well exist).
    last = {name: name if name.startswith("plugin.") else name.rsplit(".", 1)[-1] for name in later}
    wrongly_guarded = [name for name in later if present("10.3", last[name])]
    assert not wrongly_guarded, f"10.3.0 already has {wrongly_guarded}: their first release is 10.3"


@pytest.mark.network
def test_facts_recorded_in_trt_api():
    """The release facts trt_api.py states in its docstring."""
    b103, b114 = names("10.3"), names("11.4")
    assert b103.has_text("Enable FP16 layer selection") and b103.has_text("Enable Int8 layer selection")
    assert not b114.has_text("Enable FP16 layer selection") and not b114.has_text("Enable Int8 layer selection")
    assert "OBEY_PRECISION_CONSTRAINTS" in b103 and "OBEY_PRECISION_CONSTRAINTS" not in b114
    tf32 = "Allow (but not require) computations on tensors of type DataType.FLOAT to use TF32"
    assert b103.has_text(tf32) and b114.has_text(tf32) and "TF32" in b114
    assert "engine_host_code_allowed" in b103
    profile_doc = "Get the minimum/optimum/maximum dimensions for a particular tensor under an optimization profile."
    assert b103.has_text(profile_doc) and b114.has_text(profile_doc)


def test_supports_and_require():
    from samexport.errors import SamExportError

    assert trt_api.supports("10.9.0.34", "HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY")
    assert not trt_api.supports("10.3.0.30", "HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY")
    assert trt_api.supports("10.3.0.30", "BuilderFlag.VERSION_COMPATIBLE")
    assert trt_api.supports("10.14.1.48", "onnx attention") and not trt_api.supports("10.13.3.9", "onnx attention")
    level, what = "HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY", "a same_compute_capability plan"
    with pytest.raises(SamExportError, match=rf"^{what} needs TensorRT >= 10.9; this is TensorRT 10.3.0.30$"):
        trt_api.require("10.3.0.30", level, what)
    trt_api.require("11.4.0.106", level, what)
    with pytest.raises(KeyError, match="trt_api"):
        trt_api.supports("10.3.0", "BuilderFlag.NOT_IN_THE_TABLE")


def test_supports_looks_at_a_module():
    import types

    level = types.SimpleNamespace(AMPERE_PLUS=1)  # a 10.9 module that somehow lacks the member
    trt = types.SimpleNamespace(__version__="10.9.0.34", __name__="tensorrt", HardwareCompatibilityLevel=level)
    assert trt_api.supports(trt, "HardwareCompatibilityLevel.AMPERE_PLUS")
    assert not trt_api.supports(trt, "HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY")
    level.SAME_COMPUTE_CAPABILITY = 2
    assert trt_api.supports(trt, "HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY")
    trt.__version__ = "10.3.0"  # the attribute alone is not enough on a release before the first
    assert not trt_api.supports(trt, "HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY")


# --- The table against the code -------------------------------------------------------------------

_TRT_USE = re.compile(r"(?<![\w.])(?:self\.)?trt\.([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)")
_TRTP_USE = re.compile(r"(?<![\w.])trtp\.([A-Za-z_]\w*)")


def scan(source: str) -> set[str]:
    """``trt.<Name>`` / ``trt.<Enum>.<MEMBER>`` paths (up to the first dunder or call) and
    ``trtp.<Name>`` as ``plugin.<Name>`` in Python source."""
    used = set()
    for match in _TRT_USE.finditer(source):
        parts = []
        for part in match.group(1).split("."):
            if part.startswith("__") and part != "__version__":
                break
            parts.append(part)
        if parts:
            used.add(".".join(parts))
    used.update(f"plugin.{m.group(1)}" for m in _TRTP_USE.finditer(source))
    return used


def test_scan_finds_uses():
    source = (
        "builder_config.set_flag(trt.BuilderFlag.TF32)\nself.trt.TensorIOMode.INPUT\n"
        "trt.ILogger.__init__(self)\nx = trt.__version__\nlaunch = trtp.KernelLaunchParams()\nstrt.Nope\n"
    )
    expected = {"BuilderFlag.TF32", "TensorIOMode.INPUT", "ILogger", "__version__", "plugin.KernelLaunchParams"}
    assert scan(source) == expected
    assert "BuilderFlag.MADE_UP" not in trt_api.API  # so a use of it would be reported below


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_tensorrt_use_is_in_the_table(path):
    code = "\n".join(
        line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")
    )
    missing = sorted(name for name in scan(code) if name not in trt_api.API)
    assert not missing, f"{path.name} uses TensorRT names missing from samexport/engines/trt_api.py API: {missing}"


# --- The attention mode per release (samexport doctor, docs/jetson.md) ---------------------------

# Release of the real bindings -> the mode doctor recommends. 10.3: JetPack 6.x; 10.16: JetPack 7.2;
# 11.4: TensorRT 11.4.1 supports JetPack >= 7.2.2.
ADVICE = {"10.3": "fused-pattern", "10.9": "fused-pattern", "10.16": "onnx-attention", "11.4": "onnx-attention"}


@pytest.mark.network
@pytest.mark.parametrize("release", tuple(trt_bindings.RELEASES))
def test_recommended_attention_matches_the_bindings(release):
    """The advice for each real release, and the API it relies on is in that release's bindings:
    IAttention (what the ONNX parser builds from Attention, 10.14 on) for onnx-attention; for
    fused-pattern before 10.14, that IAttention is indeed absent (and the plugin API too on 10.3)."""
    version = trt_bindings.RELEASES[release]
    advice = trt_api.recommended_attention(version)
    assert advice.mode == ADVICE[release]
    found = names(release)
    has_attention_layer = "IAttention" in found and "add_attention" in found
    assert has_attention_layer == (advice.mode == "onnx-attention")
    assert ("aot_impl" in plugin_names(release)) == trt_api.supports(version, "attention plugin")
    if advice.mode == "fused-pattern":
        assert "10.14" in advice.reason
    else:
        assert "#4738" in advice.reason and "#4739" in advice.reason


def test_recommended_attention_mentions_fp32_accumulation_from_11_3():
    assert "11.3" in trt_api.recommended_attention("11.4.1.2").reason
    assert "#4837" in trt_api.recommended_attention("10.16.1.11").reason


def test_doctor_prints_the_advice(monkeypatch):
    from samexport import doctor

    real = doctor._version
    monkeypatch.setattr(doctor, "_version", lambda module: "10.16.1.11" if module == "tensorrt" else real(module))
    report = doctor.diagnose()
    assert report["recommended --attention"].startswith("onnx-attention (imported as IAttention")
    assert report["recommended --attention"].endswith("see docs/jetson.md")
