"""Triton model repository entries (instseg_train.triton): config.pbtxt, the batch dimension,
the python backend's model.py, and a round trip through a real tritonserver when
scripts/setup-triton.sh has installed one (INSTSEG_TRITONSERVER)."""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import subprocess
import sys
import threading
import types
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory, text_format
from onnx import TensorProto, helper, numpy_helper

from instseg_train import triton
from instseg_train.triton import write_repository

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures"
COLOUR = FIXTURES / "colour.onnx"
COLOUR_DYNAMIC = FIXTURES / "colour_dynamic.onnx"


# --- config.pbtxt, parsed back with the part of Triton's model_config.proto it uses ---

def _model_config_class():
    """inference.ModelConfig, reduced to the fields a repository entry writes (same names,
    types and numbers as Triton's model_config.proto), so text_format parses config.pbtxt."""
    f = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="instseg_test_model_config.proto", package="inference",
                                              syntax="proto3")

    def message(name, fields, nested=()):
        m = file.message_type.add(name=name)
        for nested_message in nested:
            m.nested_type.add().CopyFrom(nested_message)
        for (number, field_name), kind, label, type_name in fields:
            field = m.field.add(name=field_name, number=number, type=kind, label=label or f.LABEL_OPTIONAL)
            if type_name:
                field.type_name = type_name
        return m

    def map_entry(name, value_kind, value_type=""):
        entry = descriptor_pb2.DescriptorProto(name=name)
        entry.options.map_entry = True
        entry.field.add(name="key", number=1, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
        value = entry.field.add(name="value", number=2, type=value_kind, label=f.LABEL_OPTIONAL)
        if value_type:
            value.type_name = value_type
        return entry

    data_type = file.enum_type.add(name="DataType")
    for number, name in enumerate(["TYPE_INVALID", "TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32",
                                   "TYPE_UINT64", "TYPE_INT8", "TYPE_INT16", "TYPE_INT32", "TYPE_INT64",
                                   "TYPE_FP16", "TYPE_FP32", "TYPE_FP64", "TYPE_STRING", "TYPE_BF16"]):
        data_type.value.add(name=name, number=number)
    rep = f.LABEL_REPEATED
    message("ModelParameter", [((1, "string_value"), f.TYPE_STRING, None, None)])
    message("ModelInput", [((1, "name"), f.TYPE_STRING, None, None),
                           ((2, "data_type"), f.TYPE_ENUM, None, ".inference.DataType"),
                           ((4, "dims"), f.TYPE_INT64, rep, None)])
    message("ModelOutput", [((1, "name"), f.TYPE_STRING, None, None),
                            ((2, "data_type"), f.TYPE_ENUM, None, ".inference.DataType"),
                            ((3, "dims"), f.TYPE_INT64, rep, None)])
    group = message("ModelInstanceGroup", [((1, "name"), f.TYPE_STRING, None, None),
                                           ((4, "kind"), f.TYPE_ENUM, None, ".inference.ModelInstanceGroup.Kind"),
                                           ((2, "count"), f.TYPE_INT32, None, None)])
    kind = group.enum_type.add(name="Kind")
    for number, name in enumerate(["KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL"]):
        kind.value.add(name=name, number=number)
    message("ModelDynamicBatching", [((2, "max_queue_delay_microseconds"), f.TYPE_UINT64, None, None)])
    message("Accelerator", [((1, "name"), f.TYPE_STRING, None, None),
                                          ((2, "parameters"), f.TYPE_MESSAGE, rep,
                                           ".inference.Accelerator.ParametersEntry")],
                          nested=[map_entry("ParametersEntry", f.TYPE_STRING)])
    accelerator = ".inference.Accelerator"
    message("ExecutionAccelerators", [((1, "gpu_execution_accelerator"), f.TYPE_MESSAGE, rep, accelerator),
                                      ((2, "cpu_execution_accelerator"), f.TYPE_MESSAGE, rep, accelerator)])
    message("ModelOptimizationPolicy", [((6, "execution_accelerators"), f.TYPE_MESSAGE, None,
                                         ".inference.ExecutionAccelerators")])
    message("ModelConfig", [
        ((1, "name"), f.TYPE_STRING, None, None),
        ((2, "platform"), f.TYPE_STRING, None, None),
        ((17, "backend"), f.TYPE_STRING, None, None),
        ((4, "max_batch_size"), f.TYPE_INT32, None, None),
        ((5, "input"), f.TYPE_MESSAGE, rep, ".inference.ModelInput"),
        ((6, "output"), f.TYPE_MESSAGE, rep, ".inference.ModelOutput"),
        ((7, "instance_group"), f.TYPE_MESSAGE, rep, ".inference.ModelInstanceGroup"),
        ((12, "optimization"), f.TYPE_MESSAGE, None, ".inference.ModelOptimizationPolicy"),
        ((11, "dynamic_batching"), f.TYPE_MESSAGE, None, ".inference.ModelDynamicBatching"),
        ((14, "parameters"), f.TYPE_MESSAGE, rep, ".inference.ModelConfig.ParametersEntry"),
    ], nested=[map_entry("ParametersEntry", f.TYPE_MESSAGE, ".inference.ModelParameter")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))


ModelConfig = _model_config_class()


def parse_config(entry: Path):
    return text_format.Parse((entry / "config.pbtxt").read_text(), ModelConfig())


def instseg_metadata(path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props if p.key.startswith("instseg.")}


def batch_dims(path) -> dict[str, int | str]:
    proto = onnx.load(str(path))
    return {v.name: (v.type.tensor_type.shape.dim[0].dim_param or v.type.tensor_type.shape.dim[0].dim_value)
            for v in [*proto.graph.input, *proto.graph.output]}


def test_python_flavour_config_and_files(tmp_path):
    entry = write_repository(COLOUR, tmp_path / "repo", backend="python")
    assert entry == tmp_path / "repo" / "instseg"
    assert sorted(p.name for p in (entry / "1").iterdir()) == ["model.onnx", "model.py"]
    config = parse_config(entry)
    assert (config.name, config.backend, config.platform, config.max_batch_size) == ("instseg", "python", "", 8)
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [("image", 11, [3, 64, 64])]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [
        ("embedding", 11, [3, 64, 64]), ("classes", 11, [2, 4, 64, 64])]
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    assert [(g.count, g.kind) for g in config.instance_group] == [(1, 2)]  # KIND_CPU
    assert not config.HasField("optimization")
    assert {key: value.string_value for key, value in config.parameters.items()} == instseg_metadata(COLOUR)
    text = (entry / "config.pbtxt").read_text()
    assert 'parameters { key: "instseg.labels" value { string_value: "red,green,blue" } }' in text
    # the copy has a symbolic batch; the file's metadata is kept
    assert batch_dims(entry / "1" / "model.onnx") == {"image": "N", "embedding": "N", "classes": "N"}
    assert instseg_metadata(entry / "1" / "model.onnx") == instseg_metadata(COLOUR)


def test_onnxruntime_flavour_config_of_a_dynamic_size_model(tmp_path):
    entry = write_repository(COLOUR_DYNAMIC, tmp_path, name="seg", max_batch_size=4, instance_count=2,
                             tensorrt=True, max_queue_delay_us=500, threads=2)
    assert sorted(p.name for p in (entry / "1").iterdir()) == ["model.onnx"]
    config = parse_config(entry)
    assert (config.name, config.backend, config.platform, config.max_batch_size) == (
        "seg", "onnxruntime", "onnxruntime_onnx", 4)
    # instseg.input-size is 96x80 (W x H): the entry is fixed to it
    assert [list(i.dims) for i in config.input] == [[3, 80, 96]]
    assert [list(o.dims) for o in config.output] == [[3, 80, 96], [2, 4, 80, 96]]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert [(g.count, g.kind) for g in config.instance_group] == [(2, 1)]  # KIND_GPU
    assert [a.name for a in config.optimization.execution_accelerators.gpu_execution_accelerator] == ["tensorrt"]
    parameters = {key: value.string_value for key, value in config.parameters.items()}
    assert parameters.pop("intra_op_thread_count") == "2"
    assert parameters == instseg_metadata(COLOUR_DYNAMIC)
    assert batch_dims(entry / "1" / "model.onnx")["image"] == "N"


def test_config_options_and_text_escaping(tmp_path):
    proto = onnx.load(str(COLOUR))
    note = 'a "quoted" \\ back\nslash, tab\t, bell\a and é ✓'
    helper.set_model_props(proto, {**instseg_metadata(COLOUR), "instseg.note": note, "other": "left out"})
    model = tmp_path / "odd.onnx"
    onnx.save(proto, str(model))
    entry = write_repository(model, tmp_path / "repo", backend="onnxruntime", kind="cpu", max_batch_size=0)
    config = parse_config(entry)
    parameters = {key: value.string_value for key, value in config.parameters.items()}
    assert parameters["instseg.note"] == note and "other" not in parameters
    # no batching: the dims hold the batch of 1, no dynamic batching, the file keeps its batch of 1
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert [list(i.dims) for i in config.input] == [[1, 3, 64, 64]]
    assert [list(o.dims) for o in config.output] == [[1, 3, 64, 64], [1, 2, 4, 64, 64]]
    assert [(g.count, g.kind) for g in config.instance_group] == [(1, 2)]
    assert batch_dims(entry / "1" / "model.onnx") == {"image": 1, "embedding": 1, "classes": 1}
    with pytest.raises(ValueError, match="TensorRT"):
        write_repository(COLOUR, tmp_path / "repo", backend="python", tensorrt=True)
    with pytest.raises(ValueError, match="TensorRT"):
        write_repository(COLOUR, tmp_path / "repo", kind="cpu", tensorrt=True)


def test_cli_writes_the_entry(tmp_path, capsys):
    triton.main(["--model", str(COLOUR), "--repository", str(tmp_path), "--backend", "python", "--name", "m",
                 "--max-batch-size", "2", "--instance-count", "3", "--max-queue-delay-us", "0"])
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / "m" / "config.pbtxt"), str(tmp_path / "m" / "1" / "model.onnx"),
                       str(tmp_path / "m" / "1" / "model.py")]
    config = parse_config(tmp_path / "m")
    assert (config.max_batch_size, config.instance_group[0].count) == (2, 3)
    assert config.HasField("dynamic_batching") and config.dynamic_batching.max_queue_delay_microseconds == 0
    with pytest.raises(SystemExit):
        triton.main(["--model", str(tmp_path / "missing.onnx"), "--repository", str(tmp_path)])


# --- the batch dimension ---

def run(path, images):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(list(triton.OUTPUTS), {"image": images})


def test_a_fixed_batch_of_one_becomes_symbolic_and_batches_correctly(tmp_path):
    entry = write_repository(COLOUR, tmp_path)
    images = np.random.default_rng(0).uniform(0, 1, (3, 3, 64, 64)).astype(np.float32)
    batched = run(entry / "1" / "model.onnx", images)
    for i in range(3):
        alone = run(COLOUR, images[i:i + 1])
        for b, a in zip(batched, alone):
            np.testing.assert_allclose(b[i], a[0], rtol=1e-5, atol=1e-6)


def tiny_model(path, mix_batch=False):
    """A contract-shaped model [1, 3, 4, 4] whose graph fixes the batch to 1 (a Reshape to a
    constant shape) or, with mix_batch, runs any batch but mixes its images (minus the batch mean)."""
    n = helper.make_node
    inits = [numpy_helper.from_array(np.array([1, 3, 4, 4], np.int64), "fixed"),
             numpy_helper.from_array(np.array([0], np.int64), "zero"),
             numpy_helper.from_array(np.array([2], np.int64), "two"),
             numpy_helper.from_array(np.array([1], np.int64), "one")]
    if mix_batch:
        nodes = [n("ReduceMean", ["image", "zero"], ["mean"], keepdims=1), n("Sub", ["image", "mean"], ["embedding"])]
    else:
        nodes = [n("Reshape", ["image", "fixed"], ["embedding"])]
    nodes += [n("Slice", ["image", "zero", "two", "one"], ["two_channels"]),
              n("Unsqueeze", ["two_channels", "one"], ["classes"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, 3, 4, 4]),
                               helper.make_tensor_value_info("classes", TensorProto.FLOAT, [1, 1, 2, 4, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    helper.set_model_props(model, {"instseg.contract": "1", "instseg.labels": "x", "instseg.thresholds": "0.5"})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("mix_batch, reason", [(False, "does not run with a batch of 2"), (True, "differs")])
def test_a_graph_that_fixes_or_mixes_the_batch_is_refused(tmp_path, mix_batch, reason):
    model = tiny_model(tmp_path / "tiny.onnx", mix_batch)
    with pytest.raises(ValueError, match=reason) as error:
        write_repository(model, tmp_path / "repo")
    assert "max_batch_size 0" in str(error.value)
    entry = write_repository(model, tmp_path / "repo", max_batch_size=0)  # without batching it is fine
    assert parse_config(entry).max_batch_size == 0


def test_a_dynamic_batch_file_is_copied_as_it_is(tmp_path):
    dynamic = write_repository(COLOUR, tmp_path / "first") / "1" / "model.onnx"
    entry = write_repository(dynamic, tmp_path / "second")
    assert (entry / "1" / "model.onnx").read_bytes() == dynamic.read_bytes()


# --- the python backend's model.py, with a stand-in for triton_python_backend_utils ---

def fake_pb_utils():
    pb = types.ModuleType("triton_python_backend_utils")

    class Tensor:
        def __init__(self, name, array):
            self._name, self._array = name, array

        def name(self):
            return self._name

        def as_numpy(self):
            return self._array

    class TritonError:
        def __init__(self, message):
            self._message = message

        def message(self):
            return self._message

    class InferenceResponse:
        def __init__(self, output_tensors, error=None):
            self._tensors, self._error = output_tensors, error

        def output_tensors(self):
            return self._tensors

        def error(self):
            return self._error

        def has_error(self):
            return self._error is not None

    class InferenceRequest:
        def __init__(self, inputs):
            self._inputs = inputs

        def inputs(self):
            return self._inputs

    def get_input_tensor_by_name(request, name):
        return next((t for t in request.inputs() if t.name() == name), None)

    def get_output_tensor_by_name(response, name):
        return next((t for t in response.output_tensors() if t.name() == name), None)

    pb.Tensor, pb.TritonError, pb.InferenceResponse, pb.InferenceRequest = (Tensor, TritonError, InferenceResponse,
                                                                            InferenceRequest)
    pb.get_input_tensor_by_name, pb.get_output_tensor_by_name = get_input_tensor_by_name, get_output_tensor_by_name
    return pb


def load_model_py(entry, monkeypatch):
    pb = fake_pb_utils()
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    spec = importlib.util.spec_from_file_location("instseg_triton_model", entry / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    # Triton hands initialize() the config as JSON (proto field names)
    config = json_format.MessageToJson(parse_config(entry), preserving_proto_field_name=True)
    model.initialize({"model_config": config, "model_repository": str(entry), "model_version": "1",
                      "model_name": entry.name, "model_instance_kind": "CPU", "model_instance_name": "m_0"})
    runs = []  # the batch size of each session run

    class CountingSession:
        def __init__(self, session):
            self.session = session

        def run(self, names, feeds):
            runs.append(next(iter(feeds.values())).shape[0])
            return self.session.run(names, feeds)

    model.session = CountingSession(model.session)
    return pb, model, runs


def test_model_py_runs_the_requests_as_one_batch_and_splits_the_outputs(tmp_path, monkeypatch):
    entry = write_repository(COLOUR, tmp_path, backend="python")
    pb, model, runs = load_model_py(entry, monkeypatch)
    rng = np.random.default_rng(0)
    inputs = [rng.uniform(0, 1, (n, 3, 64, 64)).astype(np.float32) for n in (1, 2, 1)]
    requests = [pb.InferenceRequest([pb.Tensor("image", x)]) for x in inputs]
    requests.insert(1, pb.InferenceRequest([pb.Tensor("wrong", inputs[0])]))
    responses = model.execute(requests)
    assert runs == [4]  # one run for the three good requests
    assert len(responses) == 4
    assert responses[1].has_error() and "no input 'image'" in responses[1].error().message()
    for response, x in zip([responses[0], *responses[2:]], inputs):
        assert not response.has_error()
        want = run(COLOUR, x) if x.shape[0] == 1 else [np.concatenate(v) for v in zip(*(run(COLOUR, x[i:i + 1])
                                                                                          for i in range(2)))]
        for name, w in zip(triton.OUTPUTS, want):
            got = pb.get_output_tensor_by_name(response, name).as_numpy()
            assert got.dtype == np.float32 and got.flags["C_CONTIGUOUS"] and got.shape == w.shape
            np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-6)
    # a failing run answers each of its requests with an error
    responses = model.execute([pb.InferenceRequest([pb.Tensor("image", np.zeros((1, 3, 2, 2), np.float32))])])
    assert responses[0].has_error() and "inference failed" in responses[0].error().message()
    model.finalize()


def test_model_py_runs_a_fixed_batch_file_one_request_at_a_time(tmp_path, monkeypatch):
    entry = write_repository(COLOUR, tmp_path, backend="python", max_batch_size=0)
    pb, model, runs = load_model_py(entry, monkeypatch)
    x = np.random.default_rng(1).uniform(0, 1, (2, 1, 3, 64, 64)).astype(np.float32)
    responses = model.execute([pb.InferenceRequest([pb.Tensor("image", x[0])]),
                               pb.InferenceRequest([pb.Tensor("image", x[1])])])
    assert runs == [1, 1]
    for response, image in zip(responses, x):
        for name, want in zip(triton.OUTPUTS, run(COLOUR, image)):
            np.testing.assert_array_equal(pb.get_output_tensor_by_name(response, name).as_numpy(), want)


# --- a real tritonserver (scripts/setup-triton.sh; scripts/test.sh sources its env file) ---

@pytest.mark.skipif(not os.environ.get("INSTSEG_TRITONSERVER"),
                    reason="no tritonserver: run scripts/setup-triton.sh and source its env.sh")
def test_real_server_round_trip_batching_and_shutdown(tmp_path):
    repo = tmp_path / "repo"
    write_repository(COLOUR, repo, backend="python", max_queue_delay_us=50000)  # batches form surely
    write_repository(COLOUR_DYNAMIC, repo, name="instseg_ort", tensorrt=True)  # parsed, but no backend here
    (repo / "broken").mkdir()
    (repo / "broken" / "config.pbtxt").write_text('name: "broken"\nbackend: "onnxruntime"\nmax_batch_size: [\n')
    session = ort.InferenceSession(str(COLOUR), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    options = ["--model-control-mode=explicit", "--load-model=instseg", "--exit-timeout-secs=5"]
    with triton.local_server(repo, log=tmp_path / "server.log", extra_args=options) as server:
        pid = server.process.pid
        connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)

        def get(path):
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, json.loads(response.read() or b"null")

        status, metadata = get("/v2/models/instseg")
        assert status == 200 and metadata["inputs"] == [{"name": "image", "datatype": "FP32",
                                                         "shape": [-1, 3, 64, 64]}]
        status, config = get("/v2/models/instseg/config")
        assert status == 200 and config["max_batch_size"] == 8
        assert {k: v["string_value"] for k, v in config["parameters"].items()} == instseg_metadata(COLOUR)

        # the onnxruntime flavour's config parses (the server has no onnxruntime backend); a broken one does not
        def load(name):
            connection.request("POST", f"/v2/repository/models/{name}/load", body=b"{}")
            response = connection.getresponse()
            return response.status, response.read().decode()

        status, message = load("instseg_ort")
        assert status == 400 and "unable to find backend library for backend 'onnxruntime'" in message, message
        status, message = load("broken")
        assert status != 200 and "backend library" not in message, message  # 500, "failed to poll"

        image = rng.uniform(0, 1, (1, 3, 64, 64)).astype(np.float32)
        got = triton.infer(server.http_port, image, connection=connection)
        want = session.run(list(triton.OUTPUTS), {"image": image})
        for name, w in zip(triton.OUTPUTS, want):
            np.testing.assert_array_equal(got[name], w)
        with pytest.raises(RuntimeError, match="HTTP 400.*unexpected shape"):
            triton.infer(server.http_port, np.zeros((1, 3, 2, 2), np.float32), connection=connection)

        # concurrent requests are batched by the server and each gets its own outputs back
        _, before = get("/v2/models/instseg/stats")
        images = [rng.uniform(0, 1, (1, 3, 64, 64)).astype(np.float32) for _ in range(4)]
        results, barrier = {}, threading.Barrier(4)

        def client(i):
            barrier.wait()
            results[i] = triton.infer(server.http_port, images[i])

        for _ in range(3):
            threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            for i, x in enumerate(images):
                for name, w in zip(triton.OUTPUTS, session.run(list(triton.OUTPUTS), {"image": x})):
                    np.testing.assert_array_equal(results[i][name], w)
        _, after = get("/v2/models/instseg/stats")
        stats = [{k: int(s[k]) for k in ("inference_count", "execution_count")}
                 for s in (before["model_stats"][0], after["model_stats"][0])]
        inferences = stats[1]["inference_count"] - stats[0]["inference_count"]
        executions = stats[1]["execution_count"] - stats[0]["execution_count"]
        assert inferences == 12 and executions < inferences, stats
        connection.close()  # an open keep-alive connection holds the server's shutdown up to its exit timeout
    assert server.process.returncode == 0
    left = subprocess.run(["ps", "-o", "pid=", "-g", str(pid)], capture_output=True, text=True).stdout.split()
    assert left == [], f"processes of the server's group left: {left}"
