// SPDX-License-Identifier: MIT
//! Finding and loading ONNX Runtime at run time, once per process (docs/element.md), and
//! preloading the CUDA libraries that the pip wheels of `onnxruntime-gpu` depend on.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::{Environment, EnvironmentBuilder};

use super::ModelError;

/// The loaded runtime: where it came from and the one environment every session uses.
pub(super) struct Runtime {
    pub(super) library: PathBuf,
    pub(super) environment: Environment,
}

/// Loads ONNX Runtime on first use; later calls get the same runtime, or the same error.
pub(super) fn runtime() -> Result<&'static Runtime, ModelError> {
    static RUNTIME: OnceLock<Result<Runtime, ModelError>> = OnceLock::new();
    RUNTIME.get_or_init(load).as_ref().map_err(Clone::clone)
}

/// A loaded library and the builder of its environment.
type Loaded = (PathBuf, EnvironmentBuilder);

const HOW_TO_INSTALL: &str = "install it with `pip install onnxruntime` (or `onnxruntime-gpu` for \
    CUDA) in a virtualenv and activate it, or set ORT_DYLIB_PATH=/abs/path/libonnxruntime.so.X";

fn load() -> Result<Runtime, ModelError> {
    let (library, builder) = match std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        Some(explicit) => load_explicit(Path::new(&explicit))?,
        None => search()?,
    };
    let environment = builder
        .with_name("instseg")
        .with_telemetry(false)
        .build()
        .map_err(|err| {
            ModelError::Runtime(format!(
                "ONNX Runtime {} loaded but could not start: {err}",
                library.display()
            ))
        })?;
    Ok(Runtime {
        library,
        environment,
    })
}

/// `ORT_DYLIB_PATH` is an explicit choice: a wrong value is an error, never a reason to
/// silently use another library.
fn load_explicit(path: &Path) -> Result<Loaded, ModelError> {
    // ort would resolve a relative path against the program's directory, not ours.
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    ort::init_from(&path)
        .map(|builder| (path.clone(), builder))
        .map_err(|err| {
            ModelError::Runtime(format!(
                "cannot load ONNX Runtime from ORT_DYLIB_PATH={}: {}; set ORT_DYLIB_PATH to the \
                 absolute path of an existing libonnxruntime.so.X, or unset it to search the \
                 usual places",
                path.display(),
                describe_load_error(&err)
            ))
        })
}

/// Looks where pip puts the library (virtualenv, user, system site-packages), then the
/// system library path.
fn search() -> Result<Loaded, ModelError> {
    let mut searched = Vec::new();
    for (parent, leaf) in site_package_patterns() {
        let pattern = parent.join("python3*").join(leaf).join("onnxruntime/capi");
        searched.push(format!("{}/libonnxruntime.so*", pattern.display()));
        if let Some(found) = newest_library(&parent, leaf) {
            return match ort::init_from(&found) {
                Ok(builder) => Ok((found, builder)),
                Err(err) => Err(unusable(&found, &err)),
            };
        }
    }
    for name in ["libonnxruntime.so", "libonnxruntime.so.1"] {
        searched.push(format!("{name} on the system library path"));
        // ort resolves a bare name against the program's directory first, which needs it.
        if std::env::current_exe().is_err() {
            continue;
        }
        match ort::init_from(name) {
            Ok(builder) => return Ok((mapped_path(name).unwrap_or_else(|| name.into()), builder)),
            Err(ort::LoadDynamicError::Dlopen { .. }) => continue,
            Err(err) => return Err(unusable(Path::new(name), &err)),
        }
    }
    let virtualenv = if virtualenv().is_some() {
        ""
    } else {
        " (no virtualenv is active: VIRTUAL_ENV is not set)"
    };
    Err(ModelError::Runtime(format!(
        "ONNX Runtime not found{virtualenv}; searched:\n  {}\nTo fix it, {HOW_TO_INSTALL}",
        searched.join("\n  ")
    )))
}

fn unusable(path: &Path, err: &ort::LoadDynamicError) -> ModelError {
    ModelError::Runtime(format!(
        "found ONNX Runtime at {} but cannot use it: {}; {HOW_TO_INSTALL}",
        path.display(),
        describe_load_error(err)
    ))
}

fn describe_load_error(err: &ort::LoadDynamicError) -> String {
    match err {
        ort::LoadDynamicError::BadVersion { version_str, .. } => format!(
            "its version {version_str} is too old, ONNX Runtime 1.{} or newer is needed \
             (`pip install -U onnxruntime`)",
            ort::MINOR_VERSION
        ),
        ort::LoadDynamicError::Dlopen { error, .. } => dlopen_reason(error),
        other => other.to_string(),
    }
}

/// libloading's own message is just "dlopen failed"; the loader's reason is its source.
fn dlopen_reason(err: &(dyn std::error::Error + 'static)) -> String {
    err.source()
        .map_or_else(|| err.to_string(), ToString::to_string)
}

fn virtualenv() -> Option<std::ffi::OsString> {
    std::env::var_os("VIRTUAL_ENV").filter(|venv| !venv.is_empty())
}

/// The `(parent, leaf)` of each `parent/python3*/leaf` site-packages pattern, in search order.
fn site_package_patterns() -> Vec<(PathBuf, &'static str)> {
    let mut patterns = Vec::new();
    if let Some(venv) = virtualenv() {
        patterns.push((Path::new(&venv).join("lib"), "site-packages"));
    }
    if let Some(home) = std::env::home_dir() {
        patterns.push((home.join(".local/lib"), "site-packages"));
    }
    patterns.push(("/usr/local/lib".into(), "dist-packages"));
    patterns.push(("/usr/lib".into(), "dist-packages"));
    patterns.push(("/usr/local/lib".into(), "site-packages"));
    patterns.push(("/usr/lib".into(), "site-packages"));
    patterns
}

/// The `libonnxruntime.so*` with the highest version in any `parent/python3*/leaf`.
fn newest_library(parent: &Path, leaf: &str) -> Option<PathBuf> {
    let pythons = std::fs::read_dir(parent).ok()?.flatten().filter(|entry| {
        entry
            .file_name()
            .to_str()
            .is_some_and(|name| name.starts_with("python3"))
    });
    let capi_dirs = pythons.map(|python| python.path().join(leaf).join("onnxruntime/capi"));
    let libraries = capi_dirs
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .flat_map(|entries| entries.flatten())
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let version = name.strip_prefix("libonnxruntime.so")?;
            let version = version
                .split('.')
                .filter(|part| !part.is_empty())
                .map(|part| part.parse::<u32>().ok())
                .collect::<Option<Vec<_>>>()?;
            Some((version, entry.path()))
        });
    libraries.max().map(|(_, path)| path)
}

/// Where the dynamic loader found a library loaded by bare name, so the element can say.
fn mapped_path(name: &str) -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .map(Path::new)
        .find(|path| {
            path.file_name()
                .is_some_and(|file| file.to_string_lossy().starts_with(name))
        })
        .map(Path::to_path_buf)
}

/// Loads, once, the CUDA and cuDNN libraries that `onnxruntime-gpu`'s pip dependencies put
/// in `site-packages/nvidia/*/lib`: its CUDA provider has no RUNPATH, so it would only look
/// on the system library path. Returns a summary for error messages.
pub(super) fn preload_cuda(library: &Path) -> &'static str {
    static SUMMARY: OnceLock<String> = OnceLock::new();
    SUMMARY.get_or_init(|| {
        let Some(nvidia) = library
            .parent()
            .filter(|capi| capi.ends_with("onnxruntime/capi"))
            .and_then(|capi| capi.parent()?.parent())
            .map(|site_packages| site_packages.join("nvidia"))
        else {
            return "ONNX Runtime is not from a pip wheel, so no pip CUDA libraries were preloaded"
                .into();
        };
        let mut lib_dirs: Vec<PathBuf> = std::fs::read_dir(&nvidia)
            .into_iter()
            .flat_map(|entries| entries.flatten())
            .map(|entry| entry.path().join("lib"))
            .filter(|dir| dir.is_dir())
            .collect();
        lib_dirs.sort();
        if lib_dirs.is_empty() {
            return format!("no pip CUDA libraries in {}/*/lib", nvidia.display());
        }
        // ort's lists are in dependency order, dependencies first.
        let names = ort::ep::cuda::CUDA_DYLIBS
            .iter()
            .chain(ort::ep::cuda::CUDNN_DYLIBS);
        let (mut loaded, mut failed) = (0, Vec::new());
        for name in names {
            let Some(path) = lib_dirs
                .iter()
                .map(|dir| dir.join(name))
                .find(|p| p.exists())
            else {
                continue;
            };
            match ort::util::preload_dylib(&path) {
                Ok(()) => loaded += 1,
                Err(err) => failed.push(dlopen_reason(&err)),
            }
        }
        let dirs: Vec<_> = lib_dirs
            .iter()
            .map(|dir| dir.display().to_string())
            .collect();
        let mut summary = format!(
            "preloaded CUDA libraries: {loaded} from {}",
            dirs.join(", ")
        );
        if !failed.is_empty() {
            summary += &format!("; could not load {}", failed.join("; "));
        }
        summary
    })
}
