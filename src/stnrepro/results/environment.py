"""The environments runs came from, as the table states them (records' ``provenance``).

Every output's header names the environment(s) of the runs it uses, one line each, and a
row whose runs came from different environments is marked: two runs are "from different
environments" when they differ in any of ``COMPARED`` (library versions, CPU capability,
threads, GPU, precision, dataset fingerprint): what can change the numbers. The CPU model
and OS are shown but not compared (the capability is what selects the kernels); neither is
the git commit. Records without provenance (written before it existed) are an "unknown
environment"; a row mixing them with known ones is marked too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from stnrepro.records.schema import RunRecord
from stnrepro.results.model import plural, show

# What "a different environment" means (library versions are compared one by one).
COMPARED = ("library versions", "CPU capability", "threads", "GPU", "precision", "data")
UNKNOWN = "unknown environment (records without provenance)"
# Libraries named in the environment line, with the short name shown.
SHOWN_LIBRARIES = (
    ("torch", "torch"),
    ("torchvision", "torchvision"),
    ("pytorch-lightning", "lightning"),
)
_PRECISION_WORDS = {"32-true": "fp32", "64-true": "fp64", "16-true": "fp16", "bf16-true": "bf16"}


def _gpu(prov: Mapping[str, Any]) -> str:
    gpu = prov.get("gpu")
    if not isinstance(gpu, Mapping):
        return "none"
    return f"{gpu.get('name')} (CUDA {show(gpu.get('cuda'))}, cuDNN {show(gpu.get('cudnn'))})"


def _data(prov: Mapping[str, Any]) -> str:
    fp = prov.get("dataset")
    if not isinstance(fp, Mapping):
        return "unknown"
    if fp.get("kind") == "synthetic":
        return (
            f"{fp.get('preset')} v{fp.get('generator_version')} seed {fp.get('gen_seed')} "
            f"{str(fp.get('settings_hash'))[:8]}"
        )
    return f"{fp.get('name')} index {str(fp.get('index_sha256'))[:8]}"


def _precision(prov: Mapping[str, Any]) -> str:
    text = show(prov.get("precision"))
    return _PRECISION_WORDS.get(text, text)


def compared(prov: Mapping[str, Any]) -> dict[str, str]:
    """The fields of ``COMPARED`` as display strings: equal strings mean the same setting."""
    versions = prov.get("versions")
    versions = versions if isinstance(versions, Mapping) else {}
    fields = {name: show(versions.get(name)) for name in sorted(versions)}
    fields.update(
        {
            "CPU capability": show(prov.get("cpu_capability")),
            "threads": show(prov.get("threads")),
            "GPU": _gpu(prov),
            "precision": _precision(prov),
            "data": _data(prov),
        }
    )
    return fields


def describe(record: RunRecord) -> str:
    """One line, e.g. ``torch 2.14.1, ..., CPU <model> (AVX512), 2 threads, fp32; data ...``."""
    prov = record.provenance
    if not prov:
        return UNKNOWN
    versions = prov.get("versions")
    versions = versions if isinstance(versions, Mapping) else {}
    parts = [f"{short} {show(versions.get(key))}" for key, short in SHOWN_LIBRARIES]
    parts.append(f"CPU {show(prov.get('cpu'))} ({show(prov.get('cpu_capability'))})")
    parts.append(plural(prov["threads"], "thread") if isinstance(prov.get("threads"), int)
                 else "threads unknown")  # fmt: skip
    if isinstance(prov.get("gpu"), Mapping):
        parts.append(f"GPU {_gpu(prov)}")
    parts.append(_precision(prov))
    return ", ".join(parts) + f"; data {_data(prov)}"


def environment_lines(records: Sequence[RunRecord]) -> list[str]:
    """The header lines naming the environments of ``records`` (most runs first)."""
    counts = Counter(describe(r) for r in records)
    if len(counts) == 1:
        return [f"Environment: {next(iter(counts))}"]
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [
        f"Environment {i} of {len(ranked)} ({plural(n, 'run')}): {text}"
        for i, (text, n) in enumerate(ranked, start=1)
    ]


def differences(records: Sequence[RunRecord]) -> tuple[str, ...]:
    """What differs between the environments of ``records``, e.g. ``threads (1, 2)``."""
    known = [compared(r.provenance) for r in records if r.provenance]
    out: list[str] = []
    for key in sorted({k for fields in known for k in fields}, key=_field_order):
        values = sorted({fields.get(key, "null") for fields in known})
        if len(values) > 1:
            out.append(f"{key} ({', '.join(values)})")
    unknown = len(records) - len(known)
    if unknown and known:
        out.append(f"provenance (unknown for {unknown} of {plural(len(records), 'run')})")
    return tuple(out)


def _field_order(key: str) -> tuple[int, str]:
    """Library versions first (alphabetical), then the other ``COMPARED`` fields in order."""
    return (COMPARED.index(key), key) if key in COMPARED else (0, key)
