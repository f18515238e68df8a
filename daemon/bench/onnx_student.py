"""The student exported to ONNX (float64, built with the ``onnx`` helper API) and served by ONNX Runtime.

The graph is the model part of the student only: ``(x - mean) * inv_std``, ``Clip(-clip, clip)``, one
``Gemm`` (+ ``Relu``) per layer, ``Softmax``. The features come from the numba feature kernel
(``kernels.features.features_step``, called through its compiled entry point as the daemon calls the
student), so against ``student_step`` only the model part differs. The session
runs single-threaded (intra_op 1, inter_op 1, sequential execution), as a per-bar server would.

Two ways to call it per bar: ``run`` (the plain ``InferenceSession.run`` with a feed dict) and
``run_bound`` (I/O binding: the input OrtValue is bound once to the feature slice of the numba state, so
no copy, and the output to a preallocated array). ``tests/test_bench.py`` checks both against the numba
student's probabilities.
"""

from __future__ import annotations

import numpy as np

from daemon.core.model import Model
from kernels.features import features_step
from kernels.layout import M_CLIP, M_FEATURES, M_HEADER, S_FEATURES, new_feature_state, unpack_mlp

from .floors import entry_point

OPSET = 17
# The feature step without numba's dispatcher: the alternatives pay no call overhead the student does not.
_features_step = entry_point(features_step)


def onnxruntime_available() -> str | None:
    """None when onnx and onnxruntime import; otherwise the reason they do not."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        return f"{e.name or 'onnxruntime'} is not installed (pip install 'kdsignal[bench]')"
    return None


def student_onnx(model: Model) -> bytes:
    """Serialise the student's model part (standardise, clip, MLP, softmax) as a float64 ONNX graph."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    vec = model.vector
    f = int(vec[M_FEATURES])
    k = len(model.classes)
    weights, biases, acts, _ = unpack_mlp(model.artifact.mlp)
    inits = [
        numpy_helper.from_array(vec[M_HEADER : M_HEADER + f].reshape(1, f).copy(), "mean"),
        numpy_helper.from_array(vec[M_HEADER + f : M_HEADER + 2 * f].reshape(1, f).copy(), "inv_std"),
        numpy_helper.from_array(np.array(-float(vec[M_CLIP])), "clip_lo"),
        numpy_helper.from_array(np.array(float(vec[M_CLIP])), "clip_hi"),
    ]
    nodes = [
        helper.make_node("Sub", ["x", "mean"], ["centred"]),
        helper.make_node("Mul", ["centred", "inv_std"], ["scaled"]),
        helper.make_node("Clip", ["scaled", "clip_lo", "clip_hi"], ["h0"]),
    ]
    src = "h0"
    for i, (w, b, act) in enumerate(zip(weights, biases, acts, strict=True)):
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        dst = f"z{i + 1}"
        nodes.append(helper.make_node("Gemm", [src, f"w{i}", f"b{i}"], [dst], transB=1))
        if act == "relu":
            nodes.append(helper.make_node("Relu", [dst], [f"h{i + 1}"]))
            dst = f"h{i + 1}"
        elif act == "tanh":
            nodes.append(helper.make_node("Tanh", [dst], [f"h{i + 1}"]))
            dst = f"h{i + 1}"
        src = dst
    nodes.append(helper.make_node("Softmax", [src], ["probs"], axis=-1))
    graph = helper.make_graph(
        nodes,
        "kdsignal_student",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [1, f])],
        [helper.make_tensor_value_info("probs", TensorProto.DOUBLE, [1, k])],
        inits,
    )
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                   producer_name="kdsignal-bench")
    onnx_model.ir_version = 8  # old enough for any onnxruntime the bench extra allows
    onnx.checker.check_model(onnx_model)
    return onnx_model.SerializeToString()


def single_thread_session(onnx_bytes: bytes):
    """An ``InferenceSession`` on one thread, sequential, full graph optimisation, CPU provider."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(onnx_bytes, sess_options=opts, providers=["CPUExecutionProvider"])


class OnnxStudent:
    """Per-bar serving through ONNX Runtime: numba feature step, then the ONNX model part."""

    def __init__(self, model: Model, session=None):
        import onnxruntime as ort

        self.session = session or single_thread_session(student_onnx(model))
        f = int(model.vector[M_FEATURES])
        self.state = new_feature_state()
        # The features of the newest bar, viewed in place as the (1, F) model input.
        self.x = self.state[S_FEATURES : S_FEATURES + f].reshape(1, f)
        self.probs = np.zeros((1, len(model.classes)))
        self.bound_probs = np.zeros((1, len(model.classes)))
        self.feed = {"x": self.x}
        # The OrtValues wrap the arrays' memory (no copy); keep them referenced for the session's life.
        self._bound = (ort.OrtValue.ortvalue_from_numpy(self.x), ort.OrtValue.ortvalue_from_numpy(self.bound_probs))
        self.binding = self.session.io_binding()
        self.binding.bind_ortvalue_input("x", self._bound[0])
        self.binding.bind_ortvalue_output("probs", self._bound[1])
        self._run = self.session.run
        self._run_bound = self.session.run_with_iobinding

    def update(self, o: float, h: float, l: float, c: float, v: float) -> int:
        """Feature step, then ``InferenceSession.run`` with a feed dict; the class index or -1 warming up."""
        if _features_step(self.state, o, h, l, c, v) <= 0:
            return -1
        self.probs = self._run(None, self.feed)[0]
        return int(self.probs.argmax())

    def update_bound(self, o: float, h: float, l: float, c: float, v: float) -> int:
        """Feature step, then ``run_with_iobinding`` on the bound state slice; probabilities land in ``bound_probs``."""
        if _features_step(self.state, o, h, l, c, v) <= 0:
            return -1
        self._run_bound(self.binding)
        return int(self.bound_probs.argmax())
