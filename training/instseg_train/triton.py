"""A Triton Inference Server model repository entry for an instseg ONNX file (docs/contract.md).

    python -m instseg_train.triton --model FILE.onnx --repository DIR [--name instseg]
        [--backend onnxruntime|python] [--max-batch-size 8] [--instance-count 1] [--kind gpu|cpu]
        [--tensorrt] [--max-queue-delay-us 2000] [--threads N]

writes ``DIR/NAME/config.pbtxt`` and ``DIR/NAME/1/model.onnx`` (and ``DIR/NAME/1/model.py`` for
the python backend). Two flavours:

- ``onnxruntime`` (production): Triton's onnxruntime backend runs the file, on the GPU by default
  (``instance_group`` ``KIND_GPU``), optionally through TensorRT (``--tensorrt``).
- ``python``: a ``model.py`` runs the file with the ``onnxruntime`` pip package on the CPU, for a
  Triton without the onnxruntime backend (the one ``scripts/setup-triton.sh`` installs for the
  tests). It concatenates the requests Triton hands it into one batch, runs once and splits the
  outputs back, so dynamic batching works as with the onnxruntime backend.

The config holds the input (the file's input name, ``TYPE_FP32``, dims ``[3, H, W]``), the outputs
``embedding`` ``[D, h, w]`` and ``classes`` ``[T, C+1, h, w]``, ``max_batch_size``,
``dynamic_batching``, ``instance_group`` and, as ``parameters``, every ``instseg.*`` key of the
file's metadata, which a client reads back at ``GET /v2/models/NAME/config``. H and W are fixed in
the entry: a model with a dynamic size gets ``instseg.input-size``. With ``max_batch_size`` > 0
Triton needs a dynamic batch dimension: a file whose batch is a fixed 1 gets a symbolic ``N``
instead, after checking with ONNX Runtime that two images in one batch give what each gives alone.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

OUTPUTS = ("embedding", "classes")
BATCH_AXIS = "N"

# The python backend's model: runs model.onnx (next to this file) with the onnxruntime package.
MODEL_PY = '''\
"""Triton python backend model written by instseg_train.triton: runs model.onnx (next to this
file) with the onnxruntime pip package on the CPU. Requests that Triton batches together are run
as one batch and the outputs split back per request. Config parameter `intra_op_thread_count`
sets ONNX Runtime's intra-op threads (default 1)."""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}
        threads = int(parameters.get("intra_op_thread_count") or 1)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "model.onnx")
        if not os.path.isfile(path):
            path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input_name = config["input"][0]["name"]
        self.output_names = [output["name"] for output in config["output"]]
        # A file with a fixed batch dimension runs one request at a time.
        self.batchable = not isinstance(self.session.get_inputs()[0].shape[0], int)

    def execute(self, requests):
        responses = [None] * len(requests)
        inputs = []  # (request index, array)
        for index, request in enumerate(requests):
            tensor = pb_utils.get_input_tensor_by_name(request, self.input_name)
            if tensor is None:
                responses[index] = self._error(f"the request has no input '{self.input_name}'")
                continue
            inputs.append((index, np.asarray(tensor.as_numpy(), dtype=np.float32)))
        groups = [inputs] if self.batchable and inputs else [[item] for item in inputs]
        for group in groups:
            try:
                batch = group[0][1] if len(group) == 1 else np.concatenate([a for _, a in group], axis=0)
                outputs = self.session.run(self.output_names, {self.input_name: batch})
            except Exception as error:  # noqa: BLE001 - every failure goes back to its requests
                for index, _ in group:
                    responses[index] = self._error(f"inference failed: {error}")
                continue
            start = 0
            for index, array in group:
                end = start + array.shape[0]
                tensors = [pb_utils.Tensor(name, np.array(output[start:end], dtype=np.float32, order="C"))
                           for name, output in zip(self.output_names, outputs)]
                responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)
                start = end
        return responses

    @staticmethod
    def _error(message):
        return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))

    def finalize(self):
        self.session = None
'''


@dataclass
class ModelIO:
    """What a repository entry says about an ONNX file: dims without the batch dimension."""

    input_name: str
    input_dims: tuple[int, int, int]  # (3, H, W)
    output_dims: dict[str, tuple[int, ...]]  # embedding (D, h, w), classes (T, C+1, h, w)
    batch: int | str | None  # the file's declared batch dimension: 1, a symbolic name, or None
    metadata: dict[str, str] = field(default_factory=dict)


def _dims(value_info) -> list[int | str | None]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in value_info.type.tensor_type.shape.dim]


def _input_size(dims, metadata) -> tuple[int, int]:
    """(H, W): the declared fixed sides, or ``instseg.input-size`` when dynamic."""
    if all(isinstance(s, int) and s > 0 for s in dims[2:]):
        return int(dims[2]), int(dims[3])
    size = metadata.get("instseg.input-size")
    if size is None:
        raise ValueError("the input's height or width is dynamic and the file has no instseg.input-size: "
                         "a Triton repository entry needs a fixed size")
    width, height = (int(v) for v in size.strip().lower().split("x"))
    return height, width


def model_io(proto) -> ModelIO:
    """Reads an onnx.ModelProto's input and outputs: the declared output dims, or those of one run
    on zeros of the input size when they are dynamic."""
    metadata = {p.key: p.value for p in proto.metadata_props}
    initializers = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ValueError(f"an instseg model has exactly one input, found {[i.name for i in inputs]}")
    dims = _dims(inputs[0])
    if len(dims) != 4 or dims[1] != 3 or inputs[0].type.tensor_type.elem_type != 1:
        raise ValueError(f"input {inputs[0].name!r} must be float32 [N, 3, H, W], got {dims}")
    height, width = _input_size(dims, metadata)
    outputs = {o.name: _dims(o) for o in proto.graph.output}
    missing = [name for name in OUTPUTS if name not in outputs]
    if missing:
        raise ValueError(f"the model has no output {missing} (outputs: {list(outputs)})")
    output_dims = {}
    if all(all(isinstance(s, int) and s > 0 for s in outputs[name][1:]) for name in OUTPUTS):
        output_dims = {name: tuple(int(s) for s in outputs[name][1:]) for name in OUTPUTS}
    else:
        import onnxruntime as ort

        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        values = session.run(list(OUTPUTS), {inputs[0].name: np.zeros((1, 3, height, width), np.float32)})
        output_dims = {name: tuple(int(s) for s in value.shape[1:]) for name, value in zip(OUTPUTS, values)}
    return ModelIO(inputs[0].name, (3, height, width), output_dims, dims[0], metadata)


def with_dynamic_batch(proto, name: str = BATCH_AXIS):
    """A copy of the onnx.ModelProto with the batch dimension of its input and outputs symbolic
    (intermediate shapes dropped, ONNX Runtime infers them again)."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    for value in [*copy.graph.input, *copy.graph.output]:
        shape = value.type.tensor_type.shape
        if len(shape.dim):
            shape.dim[0].Clear()
            shape.dim[0].dim_param = name
    del copy.graph.value_info[:]
    return copy


def check_batch(proto, input_name: str, size: tuple[int, int], n: int = 2, seed: int = 0,
                rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """Raises ValueError unless running ``n`` random images in one batch gives, for each, the
    outputs of running it alone (ONNX Runtime on the CPU)."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        images = np.random.default_rng(seed).uniform(-2, 2, (n, 3, *size)).astype(np.float32)
        batched = session.run(list(OUTPUTS), {input_name: images})
        for i in range(n):
            alone = session.run(list(OUTPUTS), {input_name: images[i:i + 1]})
            for name, b, a in zip(OUTPUTS, batched, alone):
                if b.shape[0] != n or b.shape[1:] != a.shape[1:] or not np.allclose(b[i], a[0], rtol=rtol, atol=atol):
                    raise ValueError(f"output {name!r}: image {i} of a batch of {n} differs from the image alone")
    except ValueError:
        raise
    except Exception as error:  # onnxruntime's own errors: a graph that fixes the batch inside
        raise ValueError(f"the graph does not run with a batch of {n}: {error}") from error


def _quote(text: str) -> str:
    """A protobuf text-format string literal (UTF-8 kept, control characters escaped)."""
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\{ord(ch):03o}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def config_text(io: ModelIO, name: str = "instseg", backend: str = "onnxruntime", max_batch_size: int = 8,
                instance_count: int = 1, kind: str | None = None, tensorrt: bool = False,
                max_queue_delay_us: int = 2000, threads: int = 0) -> str:
    """The config.pbtxt of a repository entry (protobuf text format)."""
    if backend not in ("onnxruntime", "python"):
        raise ValueError(f"backend must be onnxruntime or python, got {backend!r}")
    kind = kind or ("gpu" if backend == "onnxruntime" else "cpu")
    if kind not in ("gpu", "cpu"):
        raise ValueError(f"kind must be gpu or cpu, got {kind!r}")
    if tensorrt and (backend != "onnxruntime" or kind != "gpu"):
        raise ValueError("the TensorRT accelerator needs the onnxruntime backend on the GPU")
    if max_batch_size < 0 or instance_count < 1 or max_queue_delay_us < 0 or threads < 0:
        raise ValueError("max_batch_size, max_queue_delay_us and threads must be >= 0, instance_count >= 1")

    def dims(values):
        return "[ " + ", ".join(str(v) for v in values) + " ]"

    batch = () if max_batch_size > 0 else (1,)  # without batching the dims hold the batch of 1
    lines = [f"name: {_quote(name)}", f"backend: {_quote(backend)}"]
    if backend == "onnxruntime":
        lines.append('platform: "onnxruntime_onnx"')
    lines.append(f"max_batch_size: {max_batch_size}")
    lines += ["input [", "  {", f"    name: {_quote(io.input_name)}", "    data_type: TYPE_FP32",
              f"    dims: {dims(batch + tuple(io.input_dims))}", "  }", "]", "output ["]
    for i, output in enumerate(OUTPUTS):
        lines += ["  {", f"    name: {_quote(output)}", "    data_type: TYPE_FP32",
                  f"    dims: {dims(batch + tuple(io.output_dims[output]))}", "  }" + ("," if i == 0 else "")]
    lines.append("]")
    if max_batch_size > 0:
        lines += ["dynamic_batching {", f"  max_queue_delay_microseconds: {max_queue_delay_us}", "}"]
    lines += ["instance_group [", "  {", f"    count: {instance_count}", f"    kind: KIND_{kind.upper()}", "  }", "]"]
    if tensorrt:
        lines += ["optimization {", "  execution_accelerators {", "    gpu_execution_accelerator: [",
                  '      { name: "tensorrt" }', "    ]", "  }", "}"]
    parameters = {key: value for key, value in sorted(io.metadata.items()) if key.startswith("instseg.")}
    if threads:
        parameters["intra_op_thread_count"] = str(threads)  # read by the onnxruntime backend and model.py
    for key, value in parameters.items():
        lines.append(f"parameters {{ key: {_quote(key)} value {{ string_value: {_quote(value)} }} }}")
    return "\n".join(lines) + "\n"


def write_repository(model, repository, name: str = "instseg", backend: str = "onnxruntime",
                     max_batch_size: int = 8, instance_count: int = 1, kind: str | None = None,
                     tensorrt: bool = False, max_queue_delay_us: int = 2000, threads: int = 0) -> Path:
    """Writes the repository entry ``repository/name`` for the ONNX file ``model`` (see the module
    doc) and returns its directory. A fixed batch of 1 is made symbolic when ``max_batch_size`` > 0,
    and refused when the graph does not batch correctly (use max_batch_size=0 for such a file)."""
    import onnx

    proto = onnx.load(str(model))
    io = model_io(proto)
    if isinstance(io.batch, int) and io.batch != 1:
        raise ValueError(f"the input's batch dimension is {io.batch}: expected 1 or dynamic")
    if max_batch_size > 0 and isinstance(io.batch, int):
        proto = with_dynamic_batch(proto)
        try:
            check_batch(proto, io.input_name, io.input_dims[1:])
        except ValueError as error:
            raise ValueError(f"{model}: its batch dimension is fixed to 1 and cannot be made dynamic ({error}); "
                             "write the entry with max_batch_size 0 (no batching)") from error
    text = config_text(io, name, backend, max_batch_size, instance_count, kind, tensorrt, max_queue_delay_us,
                       threads)
    entry = Path(repository) / name
    version = entry / "1"
    version.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(version / "model.onnx"))
    if backend == "python":
        (version / "model.py").write_text(MODEL_PY)
    elif (version / "model.py").exists():
        (version / "model.py").unlink()
    (entry / "config.pbtxt").write_text(text)
    return entry


# --- A local tritonserver (scripts/setup-triton.sh installs one), for tests and by hand. ---

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(python: str | None = None) -> dict[str, str]:
    """The environment tritonserver's python backend needs to run the models in ``python``'s
    environment (default: $INSTSEG_TRITON_PYTHON, the venv scripts/setup-triton.sh makes, else
    this interpreter): its ``bin`` first on PATH (the stub's embedded interpreter finds that
    environment's packages from it) and its LIBDIR first on LD_LIBRARY_PATH (the stub loads that
    interpreter's libpython, not another copy). That environment needs numpy < 2: with numpy 2
    the python backend stub of Triton 2.51 returns empty output tensors."""
    python = python or os.environ.get("INSTSEG_TRITON_PYTHON") or sys.executable
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(os.path.abspath(python)) + os.pathsep + env.get("PATH", "")
    libdir = sysconfig.get_config_var("LIBDIR") if python == sys.executable else subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR') or '')"],
        check=True, capture_output=True, text=True).stdout.strip()
    if libdir:
        env["LD_LIBRARY_PATH"] = libdir + (os.pathsep + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    return env


@dataclass
class LocalServer:
    process: subprocess.Popen
    http_port: int
    grpc_port: int
    log: Path

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.http_port}"


@contextlib.contextmanager
def local_server(repository, server: str | None = None, backends: str | None = None, timeout: float = 60.0,
                 extra_args=(), log=None):
    """Starts tritonserver on 127.0.0.1 (free HTTP and gRPC ports, no metrics) over
    ``repository``, waits for ``/v2/health/ready``, yields a `LocalServer`, and stops it with
    SIGTERM (then SIGKILL after 30 s), leaving no process of its group behind. ``server`` and
    ``backends`` default to $INSTSEG_TRITONSERVER and $INSTSEG_TRITON_BACKENDS; the server's
    output goes to ``log`` (default: instseg-tritonserver-PORT.log in the temporary directory).
    Close client connections before leaving: the server waits for open ones (up to
    ``--exit-timeout-secs``, 30 s by default) when stopping."""
    server = server or os.environ["INSTSEG_TRITONSERVER"]
    backends = backends or os.environ.get("INSTSEG_TRITON_BACKENDS") or str(Path(server).parent.parent / "backends")
    for attempt in range(3):  # a port taken between free_port() and the server's bind: try others
        http_port, grpc_port = free_port(), free_port()
        while grpc_port == http_port:
            grpc_port = free_port()
        log_path = Path(log) if log else Path(tempfile.gettempdir()) / f"instseg-tritonserver-{http_port}.log"
        command = [server, f"--model-repository={repository}", f"--backend-directory={backends}",
                   "--http-address=127.0.0.1", f"--http-port={http_port}", "--grpc-address=127.0.0.1",
                   f"--grpc-port={grpc_port}", "--allow-metrics=false", *extra_args]
        with open(log_path, "wb") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=server_env(),
                                       start_new_session=True)
        try:
            _wait_ready(process, http_port, log_path, timeout)
            break
        except BaseException as error:
            stop_server(process)
            if not (isinstance(error, RuntimeError) and attempt < 2 and "already in use" in str(error).lower()):
                raise
    try:
        yield LocalServer(process, http_port, grpc_port, log_path)
    finally:
        stop_server(process)


def _wait_ready(process, http_port, log, timeout):
    """Polls /v2/health/ready until it answers 200; RuntimeError with the log's tail otherwise."""
    import http.client

    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"tritonserver exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", http_port, timeout=2)
            try:
                connection.request("GET", "/v2/health/ready")
                if connection.getresponse().status == 200:
                    return
            finally:
                connection.close()
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"tritonserver not ready after {timeout} s:\n{log.read_text()[-4000:]}")
        time.sleep(0.1)


def stop_server(process: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM (SIGKILL after ``timeout``) to a server started by `local_server`, then SIGKILL to
    anything left in its process group (the python backend's stubs)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def infer(port: int, image: np.ndarray, name: str = "instseg", input_name: str = "image", outputs=OUTPUTS,
          host: str = "127.0.0.1", connection=None, timeout: float = 30.0) -> dict[str, np.ndarray]:
    """One inference over KServe v2 HTTP with Triton's binary-tensor extension, the protocol the
    element speaks: a JSON header (its length in the ``Inference-Header-Content-Length`` header)
    followed by the input's raw little-endian float32 bytes; the reply has the same layout, one
    ``binary_data_size`` per output, the outputs' bytes in the order of the reply's ``outputs``
    (the model config's order, whatever the order asked for). Returns {output name: array};
    raises RuntimeError with the server's message on an HTTP error. ``connection``: an open
    http.client.HTTPConnection to reuse (keep-alive)."""
    import http.client
    import json

    image = np.ascontiguousarray(image, dtype="<f4")
    header = json.dumps({
        "inputs": [{"name": input_name, "shape": list(image.shape), "datatype": "FP32",
                    "parameters": {"binary_data_size": image.nbytes}}],
        "outputs": [{"name": output, "parameters": {"binary_data": True}} for output in outputs],
    }).encode()
    own = connection is None
    connection = connection or http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("POST", f"/v2/models/{name}/infer", body=header + image.tobytes(),
                           headers={"Content-Type": "application/octet-stream",
                                    "Inference-Header-Content-Length": str(len(header))})
        response = connection.getresponse()
        body = response.read()
    finally:
        if own:
            connection.close()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {body.decode(errors='replace')}")
    length = response.getheader("Inference-Header-Content-Length")
    length = int(length) if length is not None else len(body)
    reply = json.loads(body[:length])
    arrays, offset = {}, length
    for output in reply["outputs"]:
        size = output.get("parameters", {}).get("binary_data_size")
        if output["datatype"] != "FP32" or size is None:
            raise RuntimeError(f"output {output['name']!r} is not binary FP32: {output}")
        if size != 4 * int(np.prod(output["shape"])) or offset + size > len(body):
            raise RuntimeError(f"output {output['name']!r}: {size} bytes for shape {output['shape']}")
        arrays[output["name"]] = np.frombuffer(body, "<f4", size // 4, offset).reshape(output["shape"])
        offset += size
    return arrays


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m instseg_train.triton",
                                     description="Write a Triton model repository entry for an instseg ONNX file.")
    parser.add_argument("--model", required=True, help="the instseg ONNX file")
    parser.add_argument("--repository", required=True, help="the model repository directory")
    parser.add_argument("--name", default="instseg", help="the model's name in the repository (default instseg)")
    parser.add_argument("--backend", choices=("onnxruntime", "python"), default="onnxruntime",
                        help="onnxruntime (production) or python (a model.py running onnxruntime; default onnxruntime)")
    parser.add_argument("--max-batch-size", type=int, default=8,
                        help="largest batch Triton forms from concurrent requests; 0: no batching (default 8)")
    parser.add_argument("--instance-count", type=int, default=1, help="model instances (default 1)")
    parser.add_argument("--kind", choices=("gpu", "cpu"), default=None,
                        help="where the instances run (default gpu for onnxruntime, cpu for python)")
    parser.add_argument("--tensorrt", action="store_true", help="TensorRT accelerator (onnxruntime backend, GPU)")
    parser.add_argument("--max-queue-delay-us", type=int, default=2000,
                        help="how long Triton waits to fill a batch, in microseconds (default 2000)")
    parser.add_argument("--threads", type=int, default=0,
                        help="ONNX Runtime intra-op threads per instance (parameter intra_op_thread_count); "
                             "0: the backend's default (1 in the python backend's model.py)")
    args = parser.parse_args(argv)
    try:
        entry = write_repository(args.model, args.repository, args.name, args.backend, args.max_batch_size,
                                 args.instance_count, args.kind, args.tensorrt, args.max_queue_delay_us, args.threads)
    except (ValueError, OSError) as error:
        parser.exit(2, f"error: {error}\n")
    print(entry / "config.pbtxt")
    for path in sorted((entry / "1").iterdir()):
        print(path)


if __name__ == "__main__":
    main()
