// SPDX-License-Identifier: MIT
//! The model runtime on real ONNX Runtime and the fixture models of `tests/fixtures`
//! (see `make_models.py`). ONNX Runtime is found through the active virtualenv
//! (`VIRTUAL_ENV`), as a user's would be.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use gstinstseg::model::{
    ActiveProvider, ExecutionProvider, Model, ModelError, ModelOutputs, ModelSource, Resize,
    SessionOptions,
};
use gstinstseg::segment::{Overlaps, Params};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn cpu() -> SessionOptions {
    SessionOptions {
        provider: ExecutionProvider::Cpu,
        ..SessionOptions::default()
    }
}

fn load(name: &str, options: &SessionOptions) -> Result<Arc<Model>, ModelError> {
    Model::load(&ModelSource::File(fixture(name)), options)
}

fn load_error(name: &str) -> String {
    match load(name, &cpu()) {
        Ok(_) => panic!("{name} loaded, expected a contract error"),
        Err(err) => err.to_string(),
    }
}

#[test]
fn models_can_be_shared_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Model>();
}

#[test]
fn colour_model_contract() {
    let model = load("colour.onnx", &cpu()).unwrap();
    let contract = model.contract();
    assert_eq!(contract.input_name, "image");
    assert_eq!((contract.input_width, contract.input_height), (64, 64));
    assert_eq!(contract.stride, 1);
    assert_eq!((contract.grid_width, contract.grid_height), (64, 64));
    assert_eq!(contract.embedding_dim, 3);
    assert_eq!(contract.recipe.thresholds, [0.5, 0.75]);
    assert_eq!(contract.labels, ["red", "green", "blue"]);
    assert_eq!((contract.mean, contract.std), ([0.0; 3], [1.0; 3]));
    assert_eq!(contract.resize, Resize::Letterbox);
    // The file's alpha, seed-threshold and min-area; the defaults for the keys it lacks.
    let recipe = &contract.recipe;
    assert_eq!(recipe.alpha, 0.3);
    assert_eq!(recipe.seed_threshold, 0.5);
    assert_eq!(recipe.min_area, 4);
    let defaults = Params::default();
    assert_eq!(recipe.overlaps, defaults.overlaps);
    assert_eq!(recipe.max_overlap, defaults.max_overlap);
    assert_eq!(recipe.tracking, defaults.tracking);
    assert_eq!(model.active_provider(), ActiveProvider::Cpu);
    assert_eq!(model.active_provider().to_string(), "cpu");
    assert_eq!(model.fallback_reason(), None);
    let library = Model::runtime_library().unwrap();
    assert!(library.is_absolute(), "{}", library.display());
    assert!(library.to_string_lossy().contains("libonnxruntime.so"));
}

/// The shipped default model carries its recommended post-processing, the element's
/// extensions included (track-seed-threshold, overlaps, max-overlap: see the model card).
#[test]
fn default_model_recommends_its_post_processing() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/default.onnx");
    let model = Model::load(&ModelSource::File(path), &cpu()).unwrap();
    let contract = model.contract();
    assert_eq!(contract.labels, ["circle", "square", "triangle", "star"]);
    let recipe = &contract.recipe;
    assert_eq!(recipe.alpha, 0.0);
    assert_eq!(recipe.seed_threshold, 0.8);
    assert_eq!(recipe.min_area, 16);
    assert_eq!(recipe.tracking.seed_threshold, Some(0.3));
    assert_eq!(recipe.overlaps, Overlaps::Confident);
    assert_eq!(recipe.max_overlap, 0.5);
}

#[test]
fn colour_model_sees_a_red_square() {
    let model = load("colour.onnx", &cpu()).unwrap();
    let (w, h) = (64, 64);
    // Black image, red square over rows and columns 8..24; NCHW, pixel / 255.
    let mut input = vec![0.0f32; 3 * h * w];
    for y in 8..24 {
        for x in 8..24 {
            input[y * w + x] = 1.0;
        }
    }
    let mut outputs = ModelOutputs::default();
    model.run(&input, &mut outputs).unwrap();
    assert_eq!(outputs.embedding.len(), 3 * h * w);
    assert_eq!(outputs.classes.len(), 2 * 4 * h * w);

    for (x, y, rgb, class) in [(12, 12, [4.0, 0.0, 0.0], 1), (40, 40, [0.0; 3], 0)] {
        let pixel = y * w + x;
        let embedding: Vec<f32> = (0..3)
            .map(|d| outputs.embedding[d * h * w + pixel])
            .collect();
        assert_eq!(embedding, rgb, "embedding at ({x}, {y})");
        for t in 0..2 {
            let probs: Vec<f32> = (0..4)
                .map(|c| outputs.classes[(t * 4 + c) * h * w + pixel])
                .collect();
            let argmax = (0..4)
                .max_by(|&a, &b| probs[a].total_cmp(&probs[b]))
                .unwrap();
            assert_eq!(
                argmax, class,
                "class at ({x}, {y}), threshold {t}: {probs:?}"
            );
            assert!(probs[class] > 0.9, "{probs:?}");
        }
    }

    // Running again reuses the buffers.
    let pointers = (outputs.embedding.as_ptr(), outputs.classes.as_ptr());
    model.run(&input, &mut outputs).unwrap();
    assert_eq!(
        pointers,
        (outputs.embedding.as_ptr(), outputs.classes.as_ptr())
    );

    let err = model.run(&input[1..], &mut outputs).unwrap_err();
    assert!(matches!(err, ModelError::Inference(_)), "{err}");
    assert!(
        err.to_string().contains("12287 values, expected 12288"),
        "{err}"
    );
}

#[test]
fn dynamic_model_uses_metadata_input_size() {
    let model = load("colour_dynamic.onnx", &cpu()).unwrap();
    let contract = model.contract();
    assert_eq!((contract.input_width, contract.input_height), (96, 80));
    assert_eq!(
        (contract.grid_width, contract.grid_height, contract.stride),
        (96, 80, 1)
    );
    let mut outputs = ModelOutputs::default();
    model.run(&vec![0.0; 3 * 80 * 96], &mut outputs).unwrap();
    assert_eq!(outputs.embedding.len(), 3 * 80 * 96);
}

#[test]
fn stride_two_model() {
    let model = load("colour_stride2.onnx", &cpu()).unwrap();
    let contract = model.contract();
    assert_eq!(contract.stride, 2);
    assert_eq!((contract.grid_width, contract.grid_height), (32, 32));
    let mut outputs = ModelOutputs::default();
    model.run(&vec![0.0; 3 * 64 * 64], &mut outputs).unwrap();
    assert_eq!(outputs.embedding.len(), 3 * 32 * 32);
    assert_eq!(outputs.classes.len(), 2 * 4 * 32 * 32);
}

#[test]
fn sessions_are_shared_per_model_and_options() {
    let first = load("colour.onnx", &cpu()).unwrap();
    let second = load("colour.onnx", &cpu()).unwrap();
    assert!(Arc::ptr_eq(&first, &second));
    // The same file through another path is the same model.
    let other_path = fixture("../fixtures/colour.onnx");
    let third = Model::load(&ModelSource::File(other_path), &cpu()).unwrap();
    assert!(Arc::ptr_eq(&first, &third));
    // A local file ignores the server timeout.
    let timeout = SessionOptions {
        server_timeout: std::time::Duration::from_millis(1),
        ..cpu()
    };
    assert!(Arc::ptr_eq(&first, &load("colour.onnx", &timeout).unwrap()));

    let threads = SessionOptions {
        threads: 1,
        ..cpu()
    };
    let single_threaded = load("colour.onnx", &threads).unwrap();
    assert!(!Arc::ptr_eq(&first, &single_threaded));
    let embedded = ModelSource::Embedded {
        name: "colour",
        bytes: include_bytes!("fixtures/colour.onnx"),
    };
    let embedded = Model::load(&embedded, &cpu()).unwrap();
    assert!(!Arc::ptr_eq(&first, &embedded));
    assert_eq!(embedded.contract().labels, ["red", "green", "blue"]);
}

#[test]
fn concurrent_loads_of_one_model_start_one_session() {
    let options = SessionOptions {
        threads: 2,
        ..cpu()
    };
    let models: Vec<Arc<Model>> = std::thread::scope(|scope| {
        let loads: Vec<_> = (0..6)
            .map(|_| scope.spawn(|| load("colour_stride2.onnx", &options).unwrap()))
            .collect();
        loads.into_iter().map(|load| load.join().unwrap()).collect()
    });
    assert!(models.iter().all(|model| Arc::ptr_eq(model, &models[0])));
}

#[test]
fn auto_falls_back_to_cpu_with_a_reason() {
    let auto = SessionOptions::default();
    assert_eq!(auto.provider, ExecutionProvider::Auto);
    let model = load("colour.onnx", &auto).unwrap();
    // The CPU wheel of ONNX Runtime has no CUDA provider.
    assert_eq!(model.active_provider(), ActiveProvider::Cpu);
    let reason = model.fallback_reason().expect("a fallback reason");
    assert!(reason.contains("cuda"), "{reason}");
    assert!(reason.contains("onnxruntime-gpu"), "{reason}");
}

#[test]
fn explicit_gpu_providers_fail_clearly() {
    for provider in [ExecutionProvider::Cuda, ExecutionProvider::TensorRt] {
        let options = SessionOptions {
            provider,
            ..SessionOptions::default()
        };
        let err = load("colour.onnx", &options).unwrap_err();
        assert!(matches!(err, ModelError::Provider(_)), "{err}");
        let message = err.to_string();
        assert!(message.to_lowercase().contains("cuda"), "{message}");
        assert!(message.contains("colour.onnx"), "{message}");
        assert!(message.contains("pip install onnxruntime-gpu"), "{message}");
    }
}

#[test]
fn broken_models_are_refused_with_clear_messages() {
    let cases = [
        (
            "broken_missing_embedding.onnx",
            &["no output `embedding`", "features"][..],
        ),
        ("broken_missing_classes.onnx", &["no output `classes`"]),
        (
            "broken_embedding_rank.onnx",
            &["`embedding`", "[1, 3, 4096]", "[1, D, h, w]"],
        ),
        (
            "broken_thresholds.onnx",
            &["instseg.thresholds", "[1, 2, 4, 64, 64]", "[1, 3, C+1"],
        ),
        (
            "broken_labels.onnx",
            &["instseg.labels", "[1, 2, 4, 64, 64]", "[1, T, 3, h, w]"],
        ),
        (
            "broken_grid_mismatch.onnx",
            &["`classes`", "`embedding`", "[1, 3, 32, 32]"],
        ),
        (
            "broken_two_inputs.onnx",
            &["2 inputs", "image, extra", "exactly one"],
        ),
        (
            "broken_input_channels.onnx",
            &["input `image`", "(1, 4, 64, 64)", "[1, 3, H, W]"],
        ),
    ];
    for (name, needles) in cases {
        let message = load_error(name);
        assert!(message.contains(name), "{name}: {message}");
        for needle in needles {
            assert!(
                message.contains(needle),
                "{name}: no {needle:?} in: {message}"
            );
        }
    }
}

/// A model with one metadata value swapped for another of the same length, which keeps the
/// protobuf valid.
fn model_with(name: &'static str, model: &[u8], from: &[u8], to: &[u8]) -> ModelSource {
    let mut bytes = model.to_vec();
    let at = bytes
        .windows(from.len())
        .position(|window| window == from)
        .unwrap();
    bytes[at..at + to.len()].copy_from_slice(to);
    ModelSource::Embedded {
        name,
        bytes: Vec::leak(bytes),
    }
}

#[test]
fn invalid_metadata_is_refused_naming_the_key() {
    let cases = [
        (
            "descending",
            &b"0.5,0.75"[..],
            &b"0.75,0.5"[..],
            "instseg.thresholds is \"0.75,0.5\"",
        ),
        (
            "resize",
            b"letterbox",
            b"letterbix",
            "instseg.resize is \"letterbix\"",
        ),
        ("zero-std", b"1,1,1", b"1,0,1", "instseg.std is \"1,0,1\""),
        (
            "overlaps",
            b"overlaps\x12\x09confident",
            b"overlaps\x12\x09confidant",
            "instseg.overlaps is \"confidant\"",
        ),
        (
            "max-overlap",
            b"max-overlap\x12\x030.5",
            b"max-overlap\x12\x031.5",
            "instseg.max-overlap is \"1.5\"",
        ),
        (
            "version",
            b"contract\x12\x011",
            b"contract\x12\x012",
            "instseg.contract is \"2\"",
        ),
    ];
    for (name, from, to, needle) in cases {
        // The colour fixture leaves out the element's extensions; the default model has them.
        let model: &[u8] = if ["overlaps", "max-overlap"].contains(&name) {
            include_bytes!("../models/default.onnx")
        } else {
            include_bytes!("fixtures/colour.onnx")
        };
        let err = Model::load(&model_with(name, model, from, to), &cpu()).unwrap_err();
        assert!(matches!(err, ModelError::Contract(_)), "{err}");
        let message = err.to_string();
        assert!(message.contains(&format!("embedded:{name}")), "{message}");
        assert!(message.contains(needle), "{message}");
    }
}

#[test]
fn unreadable_models_name_the_file() {
    let err = load("not_a_model.onnx", &cpu()).unwrap_err();
    assert!(matches!(err, ModelError::File(_)), "{err}");
    assert!(err.to_string().contains("not_a_model.onnx"), "{err}");

    let err = load("no_such_model.onnx", &cpu()).unwrap_err();
    assert!(matches!(err, ModelError::NotFound(_)), "{err}");
    assert!(err.to_string().contains("no_such_model.onnx"), "{err}");
}

/// ONNX Runtime loads once per process, so the wrong-library case runs in a child process:
/// this same test, re-run with `INSTSEG_TEST_CHILD` set.
#[test]
fn wrong_runtime_library_is_an_error() {
    const BAD_PATH: &str = "/nonexistent/libonnxruntime.so";
    if std::env::var_os("INSTSEG_TEST_CHILD").is_some() {
        let err = Model::runtime_library().unwrap_err();
        println!("runtime_library: {err}");
        let err = load("colour.onnx", &cpu()).unwrap_err();
        println!("load: {err}");
        return;
    }
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "wrong_runtime_library_is_an_error",
            "--nocapture",
        ])
        .env("INSTSEG_TEST_CHILD", "1")
        .env("ORT_DYLIB_PATH", BAD_PATH)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for prefix in ["runtime_library: ", "load: "] {
        let line = stdout
            .lines()
            .find(|line| line.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{stdout}"));
        assert!(
            line.contains(&format!("ORT_DYLIB_PATH={BAD_PATH}")),
            "{line}"
        );
    }
}

#[test]
fn overrides_replace_the_files_values_and_are_checked_as_they_are() {
    let with = |overrides: &[(&str, &str)]| SessionOptions {
        overrides: overrides
            .iter()
            .map(|&(key, value)| (key.to_owned(), value.to_owned()))
            .collect(),
        ..cpu()
    };
    let model = load(
        "colour.onnx",
        &with(&[
            ("alpha", "0.7"),
            ("min-area", "8"),
            ("overlaps", "confident"),
        ]),
    )
    .unwrap();
    let contract = model.contract();
    assert_eq!(contract.recipe.alpha, 0.7);
    assert_eq!(contract.recipe.min_area, 8);
    assert_eq!(contract.recipe.overlaps, Overlaps::Confident);
    assert_eq!(contract.recipe.seed_threshold, 0.5, "the file's value");
    // Another set of overrides is another model; none is the file's own.
    let plain = load("colour.onnx", &cpu()).unwrap();
    assert!(!Arc::ptr_eq(&model, &plain));
    assert_eq!(plain.contract().recipe.alpha, 0.3);

    for (overrides, needle) in [
        (&[("alpha", "-1")][..], "override instseg.alpha is \"-1\""),
        (
            &[("labels", "a,b")][..],
            "instseg.labels \"a,b\" names 2 classes",
        ),
        (&[("alpah", "0.3")][..], "override \"alpah\" is not a key"),
    ] {
        let err = load("colour.onnx", &with(overrides)).unwrap_err();
        assert!(matches!(err, ModelError::Contract(_)), "{err}");
        assert!(err.to_string().contains(needle), "{err}");
    }
}
