// SPDX-License-Identifier: MIT
//! The remote backend: a model on a KServe v2 inference server such as Triton, over HTTP with
//! Triton's binary tensor extension (a JSON header, then the raw little-endian tensors), on
//! kept-alive connections. The server's dynamic batcher batches the requests of every stream
//! that uses the model.
//!
//! A request that fails for a reason that may pass (the connection refused or dropped, HTTP
//! 502, 503 or 504) is tried again up to [`RETRIES`] times after a short pause; one that gets
//! no answer within the timeout, or any other error, fails at once.

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;

use super::backend::{Backend, Declared};
use super::{ModelError, ModelOutputs};

/// Tries after the first for a request that failed for a reason that may pass.
const RETRIES: u32 = 2;
/// The pause before each retry, in milliseconds.
const RETRY_PAUSES_MS: [u64; RETRIES as usize] = [50, 200];
/// The most bytes an answer may hold (a model's outputs for one frame are far fewer).
const MAX_ANSWER_BYTES: u64 = 1 << 30;
const HEADER_LENGTH: &str = "Inference-Header-Content-Length";

/// `GET /v2/models/NAME`.
#[derive(Deserialize)]
struct ModelMetadata {
    #[serde(default)]
    inputs: Vec<TensorMetadata>,
    #[serde(default)]
    outputs: Vec<TensorMetadata>,
}

#[derive(Deserialize)]
struct TensorMetadata {
    name: String,
    datatype: String,
    #[serde(default)]
    shape: Vec<i64>,
}

/// `GET /v2/models/NAME/config` (only what the element reads).
#[derive(Deserialize)]
struct ModelConfig {
    #[serde(default)]
    parameters: HashMap<String, Parameter>,
}

#[derive(Deserialize)]
struct Parameter {
    #[serde(default)]
    string_value: String,
}

/// The JSON header of an inference answer.
#[derive(Deserialize)]
struct InferAnswer {
    #[serde(default)]
    outputs: Vec<OutputAnswer>,
}

#[derive(Deserialize)]
struct OutputAnswer {
    name: String,
    datatype: String,
    shape: Vec<i64>,
    #[serde(default)]
    parameters: HashMap<String, serde_json::Value>,
}

/// An error body: `{"error": "..."}`.
#[derive(Deserialize)]
struct ErrorAnswer {
    error: String,
}

/// A model on an inference server, as the contract check and inference see it.
#[derive(Debug)]
pub(super) struct RemoteBackend {
    agent: ureq::Agent,
    /// `http://HOST:PORT/v2/models/NAME[/versions/N]`, also the name in messages.
    url: String,
    timeout: Duration,
    inputs: Vec<Declared>,
    outputs: Vec<Declared>,
    /// The `instseg.*` keys of the model configuration's `parameters`.
    parameters: HashMap<String, String>,
}

impl RemoteBackend {
    /// Checks that the server is ready and has the model; reads what the model declares and its
    /// `instseg.*` parameters.
    pub(super) fn connect(url: &str, timeout: Duration) -> Result<Self, ModelError> {
        let base = server_of(url)?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .into();
        let backend = Self {
            agent,
            url: url.to_owned(),
            timeout,
            inputs: Vec::new(),
            outputs: Vec::new(),
            parameters: HashMap::new(),
        };
        let (status, body) = backend.get(&format!("{base}/v2/health/ready"))?;
        if status != 200 {
            return Err(ModelError::Server(format!(
                "inference server {base} is not ready (HTTP {status}{}); wait until it has \
                 started, or check its log",
                error_text(&body)
            )));
        }
        let (status, body) = backend.get(url)?;
        if status != 200 {
            return Err(ModelError::NotFound(format!(
                "inference server {base} has no ready model at {url} (HTTP {status}{}); check \
                 the model name and version in the URL and that the server loaded it",
                error_text(&body)
            )));
        }
        let metadata: ModelMetadata = backend.parse(&body, "model metadata")?;
        let (status, body) = backend.get(&format!("{url}/config"))?;
        if status != 200 {
            return Err(ModelError::Server(format!(
                "inference server {base} gives no configuration for {url} (HTTP {status}{})",
                error_text(&body)
            )));
        }
        let config: ModelConfig = backend.parse(&body, "model configuration")?;
        let declared = |tensors: Vec<TensorMetadata>| {
            tensors
                .into_iter()
                .map(|tensor| Declared {
                    description: format!("{} {:?}", tensor.datatype, tensor.shape),
                    float32: tensor.datatype == "FP32",
                    shape: Some(tensor.shape),
                    name: tensor.name,
                })
                .collect()
        };
        Ok(Self {
            inputs: declared(metadata.inputs),
            outputs: declared(metadata.outputs),
            parameters: config
                .parameters
                .into_iter()
                .filter(|(key, _)| key.starts_with("instseg."))
                .map(|(key, parameter)| (key, parameter.string_value))
                .collect(),
            ..backend
        })
    }

    /// A GET: the status and the body.
    fn get(&self, url: &str) -> Result<(u16, Vec<u8>), ModelError> {
        self.with_retries(|| self.agent.get(url).call())
    }

    /// Sends a request until it succeeds, fails for good, or [`RETRIES`] retries are spent.
    fn with_retries(
        &self,
        send: impl Fn() -> Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<(u16, Vec<u8>), ModelError> {
        let mut attempt = 0;
        loop {
            let answer = send().and_then(|mut response| {
                let status = response.status().as_u16();
                let body = response
                    .body_mut()
                    .with_config()
                    .limit(MAX_ANSWER_BYTES)
                    .read_to_vec()?;
                Ok((status, body))
            });
            let transient = match &answer {
                Ok((status, _)) => matches!(status, 502..=504),
                Err(err) => is_transient(err),
            };
            if !transient || attempt == RETRIES {
                return answer.map_err(|err| self.unreachable(err));
            }
            std::thread::sleep(Duration::from_millis(RETRY_PAUSES_MS[attempt as usize]));
            attempt += 1;
        }
    }

    fn unreachable(&self, err: ureq::Error) -> ModelError {
        match err {
            ureq::Error::Timeout(_) => ModelError::Server(format!(
                "inference server for {} gave no answer within {} ms; raise server-timeout or \
                 give the server more capacity",
                self.url,
                self.timeout.as_millis()
            )),
            err => {
                let retried = if is_transient(&err) {
                    format!(", after {RETRIES} retries")
                } else {
                    String::new()
                };
                ModelError::Server(format!(
                    "cannot reach inference server for {} ({err}{retried}); check that the \
                     server runs and the URL",
                    self.url
                ))
            }
        }
    }

    fn parse<'a, T: Deserialize<'a>>(&self, body: &'a [u8], what: &str) -> Result<T, ModelError> {
        serde_json::from_slice(body).map_err(|err| {
            ModelError::Server(format!(
                "inference server for {} sent a {what} that is not KServe v2 JSON: {err}",
                self.url
            ))
        })
    }
}

impl Backend for RemoteBackend {
    fn inputs(&self) -> &[Declared] {
        &self.inputs
    }

    fn outputs(&self) -> &[Declared] {
        &self.outputs
    }

    fn metadata(&self, key: &str) -> Option<&str> {
        self.parameters.get(key).map(String::as_str)
    }

    fn run(
        &self,
        input: &[f32],
        shape: [usize; 4],
        outputs: &mut ModelOutputs,
    ) -> Result<(), ModelError> {
        let input_name = self.inputs.first().map_or("", |input| input.name.as_str());
        let header = serde_json::json!({
            "inputs": [{
                "name": input_name,
                "shape": shape,
                "datatype": "FP32",
                "parameters": {"binary_data_size": 4 * input.len()},
            }],
            "outputs": [
                {"name": "embedding", "parameters": {"binary_data": true}},
                {"name": "classes", "parameters": {"binary_data": true}},
            ],
        })
        .to_string();
        let mut body = Vec::with_capacity(header.len() + 4 * input.len());
        body.extend_from_slice(header.as_bytes());
        for value in input {
            body.extend_from_slice(&value.to_le_bytes());
        }
        let url = format!("{}/infer", self.url);
        let (status, answer) = self.with_retries(|| {
            self.agent
                .post(&url)
                .header(HEADER_LENGTH, header.len())
                .header("Content-Type", "application/octet-stream")
                .send(&body[..])
        })?;
        if status != 200 {
            return Err(ModelError::Server(format!(
                "inference server refused a frame for {} (HTTP {status}{})",
                self.url,
                error_text(&answer)
            )));
        }
        self.read_outputs(&answer, outputs)
    }
}

impl RemoteBackend {
    /// Copies `embedding` and `classes` out of an inference answer: its JSON header, then each
    /// output's bytes in header order.
    fn read_outputs(&self, answer: &[u8], outputs: &mut ModelOutputs) -> Result<(), ModelError> {
        let malformed = |why: String| {
            ModelError::Server(format!(
                "inference server for {} sent a malformed inference answer: {why}",
                self.url
            ))
        };
        // The JSON header ends with its outermost object; the outputs' bytes follow.
        let mut stream = serde_json::Deserializer::from_slice(answer).into_iter::<InferAnswer>();
        let header = stream
            .next()
            .ok_or_else(|| malformed("no JSON header".into()))?
            .map_err(|err| malformed(err.to_string()))?;
        let mut data = &answer[stream.byte_offset()..];
        let (mut has_embedding, mut has_classes) = (false, false);
        for output in header.outputs {
            let size = output
                .parameters
                .get("binary_data_size")
                .and_then(serde_json::Value::as_u64)
                .ok_or_else(|| malformed(format!("output `{}` is not binary", output.name)))?
                as usize;
            if size > data.len() {
                return Err(malformed(format!(
                    "output `{}` announces {size} bytes, {} are left",
                    output.name,
                    data.len()
                )));
            }
            let (bytes, rest) = data.split_at(size);
            data = rest;
            let (values, dims, seen) = match output.name.as_str() {
                "embedding" => (
                    &mut outputs.embedding,
                    &mut outputs.embedding_shape,
                    &mut has_embedding,
                ),
                "classes" => (
                    &mut outputs.classes,
                    &mut outputs.classes_shape,
                    &mut has_classes,
                ),
                _ => continue,
            };
            if std::mem::replace(seen, true) {
                return Err(malformed(format!("output `{}` comes twice", output.name)));
            }
            let count: Option<usize> = output
                .shape
                .iter()
                .try_fold(1usize, |n, &dim| n.checked_mul(usize::try_from(dim).ok()?));
            if output.datatype != "FP32" || count.map(|n| 4 * n) != Some(size) {
                return Err(malformed(format!(
                    "output `{}` is {} {:?} in {size} bytes, expected float32 values",
                    output.name, output.datatype, output.shape
                )));
            }
            dims.clear();
            dims.extend(output.shape.iter().map(|&dim| dim as usize));
            values.clear();
            values.extend(
                bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            );
        }
        for (name, seen) in [("embedding", has_embedding), ("classes", has_classes)] {
            if !seen {
                return Err(malformed(format!("it lacks output `{name}`")));
            }
        }
        Ok(())
    }
}

/// `http://HOST:PORT` of a model URL, which must be
/// `http://HOST[:PORT]/v2/models/NAME[/versions/N]`.
fn server_of(url: &str) -> Result<&str, ModelError> {
    let malformed = |why: &str| {
        ModelError::Server(format!(
            "inference-server URL {url:?} {why}; give http://HOST:PORT/v2/models/NAME (optionally \
             followed by /versions/N), e.g. http://127.0.0.1:8000/v2/models/instseg"
        ))
    };
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| malformed("is not an http:// URL"))?;
    let (host, path) = rest
        .split_once('/')
        .ok_or_else(|| malformed("has no model path"))?;
    if host.is_empty() || host.contains(['?', '#', ' ', '@']) {
        return Err(malformed("has no valid host"));
    }
    let segments: Vec<&str> = path.split('/').collect();
    let valid = match segments[..] {
        ["v2", "models", name] => !name.is_empty(),
        ["v2", "models", name, "versions", version] => {
            !name.is_empty() && !version.is_empty() && version.bytes().all(|b| b.is_ascii_digit())
        }
        _ => false,
    };
    if !valid || path.contains(['?', '#', ' ']) {
        return Err(malformed("does not name a model"));
    }
    Ok(&url[..url.len() - path.len() - 1])
}

/// ": the server's error text" from an error answer, or nothing.
fn error_text(body: &[u8]) -> String {
    let text = serde_json::from_slice::<ErrorAnswer>(body)
        .map(|answer| answer.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned());
    let text: String = text.trim().chars().take(300).collect();
    if text.is_empty() {
        String::new()
    } else {
        format!(": {text}")
    }
}

/// Whether a failed request may succeed when tried again.
fn is_transient(err: &ureq::Error) -> bool {
    use std::io::ErrorKind::*;
    match err {
        ureq::Error::Io(err) => matches!(
            err.kind(),
            ConnectionRefused | ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
        ),
        ureq::Error::ConnectionFailed | ureq::Error::Protocol(_) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_urls_are_checked() {
        for (url, server) in [
            (
                "http://127.0.0.1:8000/v2/models/instseg",
                "http://127.0.0.1:8000",
            ),
            (
                "http://gpu-host/v2/models/a-b_c/versions/12",
                "http://gpu-host",
            ),
        ] {
            assert_eq!(server_of(url).unwrap(), server);
        }
        for (url, why) in [
            ("https://host/v2/models/m", "not an http:// URL"),
            ("127.0.0.1:8000/v2/models/m", "not an http:// URL"),
            ("http://host", "no model path"),
            ("http:///v2/models/m", "no valid host"),
            ("http://host/v2/models/", "does not name a model"),
            ("http://host/v1/models/m", "does not name a model"),
            (
                "http://host/v2/models/m/versions/x",
                "does not name a model",
            ),
            ("http://host/v2/models/m?x=1", "does not name a model"),
        ] {
            let error = server_of(url).unwrap_err().to_string();
            assert!(error.contains(why), "{url}: {error}");
        }
    }

    #[test]
    fn answers_are_read_in_header_order_and_checked() {
        let backend = RemoteBackend {
            agent: ureq::Agent::new_with_defaults(),
            url: "http://host/v2/models/m".into(),
            timeout: Duration::from_secs(1),
            inputs: Vec::new(),
            outputs: Vec::new(),
            parameters: HashMap::new(),
        };
        let answer = |header: &str, values: &[f32]| {
            let mut bytes = header.as_bytes().to_vec();
            values
                .iter()
                .for_each(|v| bytes.extend_from_slice(&v.to_le_bytes()));
            bytes
        };
        let header = r#"{"model_name":"m","outputs":[
            {"name":"classes","datatype":"FP32","shape":[1,1,2,1,1],"parameters":{"binary_data_size":8}},
            {"name":"embedding","datatype":"FP32","shape":[1,1,1,1],"parameters":{"binary_data_size":4}}]}"#;
        let mut outputs = ModelOutputs::default();
        backend
            .read_outputs(&answer(header, &[0.25, 0.75, 3.0]), &mut outputs)
            .unwrap();
        assert_eq!(outputs.classes, [0.25, 0.75]);
        assert_eq!(outputs.classes_shape, [1, 1, 2, 1, 1]);
        assert_eq!(outputs.embedding, [3.0]);

        let error = backend
            .read_outputs(&answer(header, &[0.25]), &mut outputs)
            .unwrap_err();
        assert!(error.to_string().contains("announces 8 bytes"), "{error}");
        let only_classes = &header[..header.find("},\n").unwrap() + 1];
        let error = backend
            .read_outputs(
                &answer(&format!("{only_classes}]}}"), &[0.25, 0.75]),
                &mut outputs,
            )
            .unwrap_err();
        assert!(
            error.to_string().contains("lacks output `embedding`"),
            "{error}"
        );

        let twice = r#"{"outputs":[
            {"name":"embedding","datatype":"FP32","shape":[1,1,1,1],"parameters":{"binary_data_size":4}},
            {"name":"embedding","datatype":"FP32","shape":[1,1,1,1],"parameters":{"binary_data_size":4}}]}"#;
        let error = backend
            .read_outputs(&answer(twice, &[1.0, 2.0]), &mut outputs)
            .unwrap_err();
        assert!(
            error.to_string().contains("`embedding` comes twice"),
            "{error}"
        );
    }

    #[test]
    fn error_texts_are_short() {
        assert_eq!(
            error_text(br#"{"error":"no such model"}"#),
            ": no such model"
        );
        assert_eq!(error_text(b""), "");
        assert_eq!(error_text(&[b'x'; 5000]).len(), 302);
    }
}
