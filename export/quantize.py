"""``model.int8.onnx``: int8 weights, int8 activations with one scale per row (token), and the
measured-sensitive nodes kept in fp32.

Activations: ONNX Runtime's dynamic quantisation gives each MatMul input ONE scale per run, set by the
largest value in the whole batch - padding rows and the other texts included. A text's vector then
depends on its batch-mates (on SmolLM2 L8, a text alone vs the same text in a batch differed by up to
0.43 per component: the int8 table of docs/export.md), and which of those vectors the cache keeps is chance.
So every ``DynamicQuantizeLinear`` that ``quantize_dynamic`` writes is replaced by a per-row quantisation:
scale = max|x| / 127 of each row (token), zero point 128 (symmetric, uint8 for the fast u8 x s8 VNNI
kernel). Rows no longer share anything, so a text gets the same vector in any batch (up to float
rounding, as fp32), and the precision is better (a token with a large value no longer coarsens the
others). Per-tensor scales fixed at export (static, calibrated on these texts) are deterministic too
but were less precise when tried, at the same speed. The int8 table of docs/export.md has the measurements.

Weights and the fp32 selection: dynamic quantisation of mid-layer LLM MatMuls can wipe out most of an
input, and which MatMuls suffer is measured, not guessed, on calibration texts against the fp32 model:
1. one graph holds both versions of every quantisable node (fp32 and int8, from one full quantisation),
   with a per-row boolean input choosing between them, so one ONNX Runtime run scores many
   fp32/int8 assignments at once (each is a copy of the calibration batch; per-row activation scales
   keep the copies from influencing each other);
2. sensitivity: the cosine drop from quantising one role alone (a role = the same weight in every layer,
   e.g. all ``mlp/down_proj``); a role whose drop is a noticeable share of the budget
   (``1 - TARGET_MEAN_COSINE``) is measured again node by node;
3. the nodes are quantised in order of drop per weight element (least harmful per unit of compute
   first; the embedding lookup has no compute, so it comes last), and a binary search finds the
   longest prefix that keeps the calibration mean cosine >= `TARGET_MEAN_COSINE`.
The written model is scored again on the calibration texts, and the export's parity check then verifies
it independently on other texts. The search's outcome depends only on the fp32 graph and the calibration
set, so a selection recorded for both in ``export/int8_selections.json`` (`export.int8_selections`) is
reused instead (the written model is still scored against the target; the search runs if it misses).

Options, measured on SmolLM2 (2-core AVX512-VNNI CPU): QInt8 weights (u8 activations x s8 weights is
the fast VNNI kernel; QUInt8 weights ran at ~1.1x fp32 instead of ~2.6x), per channel (one scale per
output column, free at run time), no ``reduce_range`` (only needed on CPUs without VNNI, and it costs a
bit of precision).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tempfile
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper
from tokenizers import Tokenizer

from artifact.manifest import sha256_file
from artifact.names import INPUT_NAMES
from export.int8_selections import RECORDED_FROM_SEARCH, SELECTIONS_FILE, find_selection

log = logging.getLogger(__name__)

# Above the parity threshold (0.99) with margin: the synthetic catalogue's items lose a little more
# cosine than these texts (SmolLM2 L8: calibration 0.9975, 512 catalogue items 0.9966; docs/export.md).
TARGET_MEAN_COSINE = 0.997
# A role whose drop alone exceeds this share of the budget is measured node by node.
REFINE_SHARE = 0.25
METHOD = (
    "onnxruntime quantize_dynamic, QInt8 weights per channel; activations uint8 with one scale per row "
    "(token: max|x|/127, zero point 128) instead of one per batch; nodes kept fp32 by measured "
    "calibration sensitivity (drop per role, then per node for sensitive roles; quantise the least drop "
    "per weight element first while the calibration mean cosine >= the target)"
)
# The manifest says so ("activations" under export -> int8); `MARC_VARIANT=auto` serves int8 on CPU only then.
ACTIVATIONS = "per-row"
ROW_ZERO_POINT = 128
CALIBRATION_TEXTS = (
    "Nordik premium formal cotton shoes in red, vegan, 82 USD",
    "Pink cream by Tidewell. Vegan. Price: 33 USD",
    "Green steel bed by Kestrel. Indoor. A budget choice for small rooms.",
    "Samsung 55 inch 4K smart TV with HDR and three HDMI ports",
    "The Lord of the Rings: The Fellowship of the Ring (paperback)",
    "Espresso machine, 15 bar pump, milk frother, stainless steel, 1.5 l tank",
    "Kids puzzle, 1000 pieces, world map",
    "Lisbon city break: 3 nights, breakfast included",
    "Wireless gaming mouse, 16000 dpi, RGB, rechargeable battery, 6 programmable buttons",
    "Toyota Corolla floor mats, all weather",
    "Mozart: The Complete Symphonies, 11 CDs",
    "Silver lamp by Juniper. Modern. A budget pick for the office desk.",
    "Organic green tea",
    "Running jacket, waterproof, reflective stripes, men's size L, navy blue, two zipped pockets and a hood",
    "socks",
    "Vintage brown leather office chair with armrests and adjustable height",
)


@dataclass(frozen=True)
class _Candidate:
    """A node quantize_dynamic quantises (weight MatMul or embedding Gather)."""

    name: str
    role: str
    """The node's name with the layer index wildcarded: the same weight in every layer."""
    weight_elements: int
    """Multiply-adds per token it moves to int8 (0 for a lookup)."""


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime.quantization logs one INFO/WARNING line per tensor on the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _calibration_feed(tokenizer_path: Path) -> dict[str, np.ndarray]:
    encodings = Tokenizer.from_file(str(tokenizer_path)).encode_batch(list(CALIBRATION_TEXTS))
    return {
        INPUT_NAMES[0]: np.array([e.ids for e in encodings], dtype=np.int64),
        INPUT_NAMES[1]: np.array([e.attention_mask for e in encodings], dtype=np.int64),
    }


def _run(
    model: str | bytes, feed: dict[str, np.ndarray], outputs: list[str] | None = None
) -> list[np.ndarray]:
    import onnxruntime

    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    return session.run(outputs, feed)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)


def _quantize(src: Path, dst: Path, keep_fp32: Sequence[str]) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_root_logger():
        quantize_dynamic(
            src, dst, weight_type=QuantType.QInt8, per_channel=True, nodes_to_exclude=list(keep_fp32)
        )
    model = onnx.load(str(dst))
    _per_row_activations(model)
    onnx.save(model, str(dst))


def _per_row_activations(model: onnx.ModelProto) -> None:
    """Replace every ``DynamicQuantizeLinear`` (one scale per tensor) by the same three outputs computed
    per row: scale = max|x| / 127 over the last axis (kept as [..., 1], so the MatMulInteger result
    downstream is rescaled row by row), zero point 128, x_q = round(x / scale) + 128 as uint8 (the
    rounded values lie in [-127, 127], so no clipping is needed)."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 18)
    nodes: list[onnx.NodeProto] = []
    constants: list[onnx.TensorProto] = []
    for node in model.graph.node:
        if node.op_type != "DynamicQuantizeLinear":
            nodes.append(node)
            continue
        (x,), (quantized, scale, zero_point) = node.input, node.output
        name = f"{node.name}/per_row"

        def const(suffix: str, value: np.ndarray, name: str = name) -> str:
            constants.append(onnx.numpy_helper.from_array(value, f"{name}/{suffix}"))
            return f"{name}/{suffix}"

        if opset >= 18:  # ReduceMax takes its axes as an input from opset 18 on
            reduce_max = helper.make_node(
                "ReduceMax", [f"{name}/abs", const("axes", np.array([-1], np.int64))], [f"{name}/max"]
            )
        else:
            reduce_max = helper.make_node("ReduceMax", [f"{name}/abs"], [f"{name}/max"], axes=[-1])
        constants.append(onnx.numpy_helper.from_array(np.array(ROW_ZERO_POINT, np.uint8), zero_point))
        nodes += [
            helper.make_node("Abs", [x], [f"{name}/abs"]),
            reduce_max,
            # An all-zero row gets a tiny scale instead of a division by zero (it quantises to 0).
            helper.make_node(
                "Max", [f"{name}/max", const("tiny", np.array(1e-12, np.float32))], [f"{name}/nz"]
            ),
            helper.make_node("Mul", [f"{name}/nz", const("inv127", np.array(1 / 127, np.float32))], [scale]),
            helper.make_node("Div", [x, scale], [f"{name}/scaled"]),
            helper.make_node("Round", [f"{name}/scaled"], [f"{name}/rounded"]),
            helper.make_node(
                "Add",
                [f"{name}/rounded", const("zero", np.array(ROW_ZERO_POINT, np.float32))],
                [f"{name}/shifted"],
            ),
            helper.make_node("Cast", [f"{name}/shifted"], [quantized], to=TensorProto.UINT8),
        ]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(constants)


def _mixed_graph(
    fp32: onnx.ModelProto, int8: onnx.ModelProto, excluded: Sequence[str]
) -> tuple[bytes, list[_Candidate]]:
    """``int8`` (quantised but for ``excluded``) where each quantised node's output is ``Where(select,
    fp32 node, int8 chain)``, ``select`` a graph input of shape [batch, 1, 1]: True rows use fp32."""
    fp32_weights = {init.name: init for init in fp32.graph.initializer}
    fp32_nodes = {node.output[0]: node for node in fp32.graph.node}
    candidates, nodes = [], []
    for node in int8.graph.node:
        nodes.append(node)
        original = fp32_nodes.get(node.output[0])
        if original is None or original.name == node.name or original.name in excluded:
            continue  # not the last node of a quantised replacement
        output = node.output[0]
        node.output[0] = f"{output}/int8"
        # Its weights get new names: the quantised graph may reuse the originals for other tensors.
        inputs = [f"{name}/fp32" if name in fp32_weights else name for name in original.input]
        exact = helper.make_node(original.op_type, inputs, [f"{output}/fp32"], name=f"{original.name}/fp32")
        exact.attribute.extend(original.attribute)
        select = f"select_fp32/{original.name}"
        nodes += [exact, helper.make_node("Where", [select, exact.output[0], node.output[0]], [output])]
        int8.graph.input.append(helper.make_tensor_value_info(select, TensorProto.BOOL, ["batch", 1, 1]))
        weights = [fp32_weights[name] for name in original.input if name in fp32_weights]
        for weight in weights:
            renamed = onnx.TensorProto()
            renamed.CopyFrom(weight)
            renamed.name = f"{weight.name}/fp32"
            int8.graph.initializer.append(renamed)
        elements = int(np.prod(weights[0].dims)) if original.op_type == "MatMul" and weights else 0
        candidates.append(_Candidate(original.name, re.sub(r"\.\d+/", ".*/", original.name), elements))
    del int8.graph.node[:]
    int8.graph.node.extend(nodes)
    return int8.SerializeToString(), candidates


class _Scorer:
    """Calibration mean cosine vs fp32 of fp32/int8 assignments, several per ONNX Runtime run."""

    def __init__(self, mixed: bytes, candidates: list[_Candidate], feed: dict[str, np.ndarray]) -> None:
        import onnxruntime

        self.session = onnxruntime.InferenceSession(mixed, providers=["CPUExecutionProvider"])
        self.candidates, self.feed = candidates, feed
        self.reference = self._outputs([frozenset()])[0]
        self.runs = 0

    def _outputs(self, int8_sets: Sequence[frozenset[str]]) -> list[np.ndarray]:
        rows = len(self.feed[INPUT_NAMES[0]])
        feed = {name: np.tile(array, (len(int8_sets), 1)) for name, array in self.feed.items()}
        for candidate in self.candidates:
            keep = np.array([candidate.name not in int8_set for int8_set in int8_sets])
            feed[f"select_fp32/{candidate.name}"] = np.repeat(keep, rows).reshape(-1, 1, 1)
        return np.split(self.session.run(None, feed)[0], len(int8_sets))

    def __call__(self, int8_sets: Sequence[frozenset[str]], chunk: int = 8) -> list[float]:
        """Mean cosine vs fp32 of each assignment (the names quantised to int8)."""
        scores = []
        for start in range(0, len(int8_sets), chunk):
            self.runs += 1
            outputs = self._outputs(int8_sets[start : start + chunk])
            scores += [float(_cosines(output, self.reference).mean()) for output in outputs]
        return scores


def _sensitivity(score: _Scorer, candidates: list[_Candidate], budget: float) -> dict[str, float]:
    """Cosine drop from quantising each candidate: measured per role, then per node in roles whose drop
    alone is a noticeable share of the budget (elsewhere the role's drop is split among its nodes)."""
    roles: dict[str, list[str]] = defaultdict(list)
    for candidate in candidates:
        roles[candidate.role].append(candidate.name)
    role_drop = dict(zip(roles, (1 - s for s in score([frozenset(n) for n in roles.values()])), strict=True))
    drop = {}
    refine = []
    for role, names in roles.items():
        log.info("  quantising %-40s alone (%2d nodes): cosine drop %.5f", role, len(names), role_drop[role])
        if role_drop[role] > REFINE_SHARE * budget and len(names) > 1:
            refine += names
        else:
            drop.update({name: role_drop[role] / len(names) for name in names})
    drop.update(zip(refine, (1 - s for s in score([frozenset([name]) for name in refine])), strict=True))
    return drop


def calibration_fingerprint(feed: dict[str, np.ndarray]) -> str:
    """What decides the fp32 selection besides the graph: the calibration token ids, the target and the
    method (a recorded selection is reused only when all are unchanged)."""
    payload = {name: feed[name].tolist() for name in INPUT_NAMES}
    payload.update(target=TARGET_MEAN_COSINE, method=METHOD, activations=ACTIVATIONS)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def quantize_int8(
    src: Path, dst: Path, tokenizer_path: Path, selections: Path | None = SELECTIONS_FILE
) -> dict[str, Any]:
    """Write ``dst`` (QInt8 weights, per output channel; the compressor's Gemm heads and the measured
    sensitive nodes stay fp32) and return what was done, for the manifest. A selection recorded in
    ``selections`` for this graph and calibration set is reused when the model it writes still meets
    the target on the calibration texts here; otherwise the search runs."""
    feed = _calibration_feed(tokenizer_path)
    key = {"graph_sha256": sha256_file(src), "calibration_fingerprint": calibration_fingerprint(feed)}
    common = {
        "method": METHOD,
        "activations": ACTIVATIONS,
        "target_calibration_mean_cosine": TARGET_MEAN_COSINE,
        "calibration_texts": len(CALIBRATION_TEXTS),
        **key,
    }
    recorded = find_selection(selections, **key) if selections is not None else None
    if recorded is not None:
        _quantize(src, dst, recorded["fp32_nodes"])
        reference = _run(str(src), feed)[0]
        written = float(_cosines(_run(str(dst), feed)[0], reference).mean())
        if written >= TARGET_MEAN_COSINE:
            log.info(
                "  int8 written with the selection recorded in %s (%d nodes kept fp32): calibration mean "
                "cosine %.5f (no search: same graph and calibration set)",
                selections,
                len(recorded["fp32_nodes"]),
                written,
            )
            return {
                **common,
                "selection": f"recorded ({selections.name})",
                "calibration_mean_cosine": written,
                **{name: recorded[name] for name in RECORDED_FROM_SEARCH},
            }
        log.warning(
            "  the selection recorded in %s gives calibration mean cosine %.5f < %.3f here: searching",
            selections,
            written,
            TARGET_MEAN_COSINE,
        )
    return {**common, "selection": "searched", **_search(src, dst, feed)}


def _search(src: Path, dst: Path, feed: dict[str, np.ndarray]) -> dict[str, Any]:
    fp32 = onnx.load(str(src))
    # The compressor's heads (Gemm) write the served vector directly and cost nothing: always fp32.
    # The quantiser first rewrites a Gemm into "<name>_MatMul" + Add, so both names are excluded.
    compressor = [
        name for n in fp32.graph.node if n.op_type == "Gemm" for name in (n.name, f"{n.name}_MatMul")
    ]
    with tempfile.TemporaryDirectory() as tmp:
        _quantize(src, Path(tmp) / "all.onnx", compressor)
        mixed, candidates = _mixed_graph(fp32, onnx.load(str(Path(tmp) / "all.onnx")), compressor)
    del fp32
    score = _Scorer(mixed, candidates, feed)
    del mixed
    budget = 1 - TARGET_MEAN_COSINE
    drop = _sensitivity(score, candidates, budget)
    # Least drop per multiply-add first; lookups (no compute) last, most sensitive first among them.
    order = sorted(
        candidates, key=lambda c: (c.weight_elements == 0, max(drop[c.name], 0) / max(c.weight_elements, 1))
    )
    all_int8 = score([frozenset(c.name for c in order)])[0]
    # Binary search for the longest prefix of `order` that meets the target (0 = all fp32 always does).
    passing, failing, cosine = 0, len(order) + 1, 1.0
    if all_int8 >= TARGET_MEAN_COSINE:
        passing, cosine = len(order), all_int8
    else:
        failing = len(order)
    while failing - passing > 1:
        middle = (passing + failing) // 2
        middle_cosine = score([frozenset(c.name for c in order[:middle])])[0]
        log.info("  %d of %d nodes int8: calibration mean cosine %.5f", middle, len(order), middle_cosine)
        if middle_cosine >= TARGET_MEAN_COSINE:
            passing, cosine = middle, middle_cosine
        else:
            failing = middle
    keep_fp32 = [c.name for c in order[passing:]]
    _quantize(src, dst, compressor + keep_fp32)
    written = float(_cosines(_run(str(dst), feed)[0], score.reference).mean())
    log.info(
        "  int8 written, %d of %d nodes kept fp32: calibration mean cosine %.5f (search: %.5f, %d runs)",
        len(keep_fp32),
        len(order),
        written,
        cosine,
        score.runs,
    )
    per_role: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for candidate in candidates:
        per_role[candidate.role][0] += candidate.name in keep_fp32
        per_role[candidate.role][1] += 1
    return {
        "calibration_mean_cosine": written,
        "all_int8_calibration_mean_cosine": all_int8,
        "fp32_per_role": {role: f"{kept}/{total}" for role, (kept, total) in per_role.items()},
        "fp32_nodes": compressor + keep_fp32,
    }
