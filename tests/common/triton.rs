// SPDX-License-Identifier: MIT
//! A real Triton Inference Server for tests: the `tritonserver` that `scripts/setup-triton.sh`
//! installs (its `env.sh` exports the `INSTSEG_TRITON*` variables read here), serving model
//! repositories that the training toolkit writes (`python -m instseg_train.triton`, python
//! backend), on 127.0.0.1 with free ports. The server stops when its [`Triton`] is dropped.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The variables `scripts/setup-triton.sh` writes to its `env.sh`, if they are set.
pub fn installed() -> Option<[String; 4]> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    Some([
        var("INSTSEG_TRITONSERVER")?,
        var("INSTSEG_TRITON_BACKENDS")?,
        var("INSTSEG_TRITON_PATH")?,
        var("INSTSEG_TRITON_LD_LIBRARY_PATH").unwrap_or_default(),
    ])
}

/// Whether the server tests can run; they fail in CI when they cannot, and say why elsewhere.
pub fn available() -> bool {
    if installed().is_some() {
        return true;
    }
    let why = "no Triton: run scripts/setup-triton.sh and source the env.sh it writes";
    assert!(std::env::var_os("CI").is_none(), "{why}");
    eprintln!("skipped: {why}");
    false
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// One entry of a model repository.
pub struct Entry<'a> {
    pub name: &'a str,
    pub model: &'a Path,
    /// More options of `python -m instseg_train.triton`.
    pub options: &'a [&'a str],
}

/// A running tritonserver and its repository, in a temporary directory.
pub struct Triton {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
}

impl Triton {
    /// Writes a repository with `entries` (python backend) and starts a server on it; waits
    /// until it is ready.
    pub fn start(entries: &[Entry]) -> Triton {
        Self::start_with(entries, |_| ())
    }

    /// As [`Self::start`], with `prepare` changing the repository before the server starts.
    pub fn start_with(entries: &[Entry], prepare: impl FnOnce(&Path)) -> Triton {
        let [server, backends, path, ld_library_path] = installed().expect("Triton installed");
        let dir = std::env::temp_dir().join(format!(
            "instseg-triton-{}-{}",
            std::process::id(),
            free_port()
        ));
        let repository = dir.join("models");
        std::fs::create_dir_all(&repository).expect("a temporary directory");
        let python = std::env::var("VIRTUAL_ENV")
            .map(|venv| format!("{venv}/bin/python"))
            .unwrap_or_else(|_| "python3".into());
        for entry in entries {
            let status = Command::new(&python)
                .args([
                    "-m",
                    "instseg_train.triton",
                    "--backend",
                    "python",
                    "--model",
                ])
                .arg(entry.model)
                .arg("--repository")
                .arg(&repository)
                .args(["--name", entry.name])
                .args(entry.options)
                .stdout(Stdio::null())
                .status()
                .expect("the toolkit runs");
            assert!(status.success(), "exporting {}", entry.model.display());
        }
        prepare(&repository);
        let (port, grpc_port) = (free_port(), free_port());
        let log = std::fs::File::create(dir.join("server.log")).expect("a log file");
        let child = Command::new(server)
            .arg(format!("--model-repository={}", repository.display()))
            .arg(format!("--backend-directory={backends}"))
            .args(["--http-address=127.0.0.1", "--grpc-address=127.0.0.1"])
            .arg(format!("--http-port={port}"))
            .arg(format!("--grpc-port={grpc_port}"))
            // Shutdown waits this long for clients' kept-alive connections.
            .args(["--allow-metrics=false", "--exit-timeout-secs=5"])
            .env("PATH", path)
            .env("LD_LIBRARY_PATH", ld_library_path)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("tritonserver starts");
        let mut triton = Triton { child, port, dir };
        triton.wait_until_ready();
        triton
    }

    fn wait_until_ready(&mut self) {
        let started = Instant::now();
        let ready = format!("http://127.0.0.1:{}/v2/health/ready", self.port);
        while started.elapsed() < Duration::from_secs(90) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("tritonserver exited ({status}):\n{}", self.log());
            }
            if ureq::get(&ready)
                .call()
                .is_ok_and(|response| response.status() == 200)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("tritonserver not ready after 90 s:\n{}", self.log());
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// The URL of model `name`.
    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/v2/models/{name}", self.port)
    }

    /// (inference count, execution count) of model `name` from the server's statistics: how
    /// many images it ran and in how many executions (batches).
    pub fn stats(&self, name: &str) -> (u64, u64) {
        let text = ureq::get(&format!("{}/stats", self.url(name)))
            .call()
            .expect("stats")
            .body_mut()
            .read_to_string()
            .expect("stats text");
        let stats: serde_json::Value = serde_json::from_str(&text).expect("stats JSON");
        let model = &stats["model_stats"][0];
        let count = |field: &str| model[field].as_u64().unwrap_or(0);
        (count("inference_count"), count("execution_count"))
    }

    /// Stops the server (SIGTERM, then SIGKILL after 20 s) and waits for it.
    pub fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Triton {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
