// SPDX-License-Identifier: MIT
//! Fuzzing the element with broken model files: `tests/fixtures/make_mutants.py` writes a few
//! hundred of them (wrong ranks, dtypes and shapes, missing and extra outputs, garbage metadata,
//! truncated and bit-flipped files, odd paths), and each runs through a pipeline in a child
//! process of this test binary, with a timeout. The element may refuse a model when it starts or
//! on the first frame, or run it; it must never crash, hang or panic, and its error messages
//! must stay short (an earlier bug echoed a 1 MB metadata value into the error).

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::element::*;
use gst::prelude::*;

/// The test a child process runs, and the variable that gives it the model location.
const CHILD_TEST: &str = "one_broken_model_in_a_child_process";
const LOCATION_VAR: &str = "INSTSEG_FUZZ_MODEL_LOCATION";
/// A child still running after this long counts as a hang.
const TIMEOUT: Duration = Duration::from_secs(60);
/// Children running at once (the CI machine has 2 cores).
const PARALLEL: usize = 2;
/// Address space of a child in KiB (ulimit -v): a model that makes the element allocate
/// absurd amounts fails fast there instead of pushing the machine into swap or the OOM killer.
const ADDRESS_SPACE_KIB: u64 = 8 << 20;
/// The fewest cases the generator must write.
const MIN_CASES: usize = 200;
/// Error messages must be shorter than this (not counting the model location itself).
const MAX_MESSAGE: usize = 4096;

/// The child: runs `videotestsrc ! instseg model-location=<location> ! fakesink` on three
/// frames and prints one line `OUTCOME start|frame <error>` or `OUTCOME ran`.
#[test]
fn one_broken_model_in_a_child_process() {
    let Some(location) = std::env::var_os(LOCATION_VAR) else {
        return; // run by the parent test only
    };
    let location = location.into_string().expect("a UTF-8 location");
    init();
    let pipeline = gst::Pipeline::new();
    let caps = gst::Caps::builder("video/x-raw")
        .field("width", 64i32)
        .field("height", 48i32)
        .build();
    let elements = [
        gst::ElementFactory::make("videotestsrc")
            .property("num-buffers", 3i32)
            .build()
            .expect("videotestsrc"),
        gst::ElementFactory::make("capsfilter")
            .property("caps", caps)
            .build()
            .expect("capsfilter"),
        // CPU: the cases are about the model file, and a child runs in a limited address
        // space that a GPU runtime would not start in.
        gst::ElementFactory::make("instseg")
            .property("model-location", &location)
            .property_from_str("execution-provider", "cpu")
            .build()
            .expect("instseg"),
        gst::ElementFactory::make("fakesink")
            .build()
            .expect("fakesink"),
    ];
    pipeline.add_many(&elements).expect("add");
    gst::Element::link_many(&elements).expect("link");
    let outcome = match pipeline.set_state(gst::State::Paused) {
        Err(_) => format!("start {}", bus_error(&pipeline)),
        Ok(_) => {
            pipeline.set_state(gst::State::Playing).ok();
            match wait_for_end(&pipeline) {
                Some(error) => format!("frame {error}"),
                None => "ran".into(),
            }
        }
    };
    // on a line of its own: libtest has printed "test ... " without a newline
    println!("\nOUTCOME {}", outcome.replace(['\n', '\r'], " "));
    pipeline.set_state(gst::State::Null).expect("to NULL");
}

/// The error a failed state change left on the bus.
fn bus_error(pipeline: &gst::Pipeline) -> String {
    let bus = pipeline.bus().expect("a pipeline has a bus");
    match bus
        .pop_filtered(&[gst::MessageType::Error])
        .as_ref()
        .map(|m| m.view())
    {
        Some(gst::MessageView::Error(err)) => format!(
            "{} ({})",
            err.error(),
            err.debug().map(|d| d.to_string()).unwrap_or_default()
        ),
        _ => "(no error message on the bus)".into(),
    }
}

/// One line of `cases.tsv`.
struct Case {
    name: String,
    category: String,
    location: String,
}

/// What happened to a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    RefusedAtStart,
    RefusedOnFrame,
    Ran,
    Crash,
    Hang,
    Panic,
}

const OUTCOMES: [(Outcome, &str); 6] = [
    (Outcome::RefusedAtStart, "refused at start"),
    (Outcome::RefusedOnFrame, "refused on the first frame"),
    (Outcome::Ran, "ran"),
    (Outcome::Crash, "crash"),
    (Outcome::Hang, "hang"),
    (Outcome::Panic, "panic"),
];

struct Finished {
    case: Case,
    outcome: Outcome,
    /// The error text of a refusal.
    message: Option<String>,
    /// How the child ended, and an excerpt of its output.
    status: String,
    output: String,
    seconds: f64,
}

/// A child process running one case, its output going to two files.
struct Running {
    case: Case,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    started: Instant,
}

impl Running {
    fn start(case: Case, logs: &Path, index: usize) -> Running {
        let stdout = logs.join(format!("{index:04}.out"));
        let stderr = logs.join(format!("{index:04}.err"));
        let file = |path: &Path| Stdio::from(std::fs::File::create(path).expect("a log file"));
        // sh limits the address space, then execs the test binary itself (same pid)
        let child = Command::new("/bin/sh")
            .arg("-c")
            .arg(format!(
                "ulimit -v {ADDRESS_SPACE_KIB} 2>/dev/null; exec \"$0\" \"$@\""
            ))
            .arg(std::env::current_exe().expect("the test binary"))
            .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
            .env(LOCATION_VAR, &case.location)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(Stdio::null())
            .stdout(file(&stdout))
            .stderr(file(&stderr))
            .spawn()
            .expect("the test binary starts");
        Running {
            case,
            child,
            stdout,
            stderr,
            started: Instant::now(),
        }
    }

    /// The finished case, if the child has ended or ran out of time (then it is killed).
    fn poll(&mut self) -> Option<(ExitStatus, bool)> {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            return Some((status, false));
        }
        if self.started.elapsed() < TIMEOUT {
            return None;
        }
        self.child.kill().ok();
        Some((self.child.wait().expect("wait"), true))
    }

    fn finish(self, status: ExitStatus, timed_out: bool) -> Finished {
        let read = |path: &Path| {
            String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
        };
        let (stdout, stderr) = (read(&self.stdout), read(&self.stderr));
        let line = stdout
            .lines()
            .find_map(|l| l.split_once("OUTCOME ").map(|(_, rest)| rest));
        let (mut outcome, mut message) = match line.map(|l| l.split_once(' ').unwrap_or((l, ""))) {
            Some(("start", text)) => (Outcome::RefusedAtStart, Some(text.to_owned())),
            Some(("frame", text)) => (Outcome::RefusedOnFrame, Some(text.to_owned())),
            Some(("ran", _)) => (Outcome::Ran, None),
            _ => (Outcome::Crash, None),
        };
        if timed_out {
            outcome = Outcome::Hang;
        } else if stdout.contains("panicked") || stderr.contains("panicked") {
            outcome = Outcome::Panic;
        } else if !status.success() {
            outcome = Outcome::Crash;
        }
        if !matches!(outcome, Outcome::RefusedAtStart | Outcome::RefusedOnFrame) {
            message = None;
        }
        let status = if timed_out {
            format!("killed after {} s", TIMEOUT.as_secs())
        } else {
            status.to_string()
        };
        Finished {
            output: format!(
                "--- stdout ---\n{}\n--- stderr ---\n{}",
                excerpt(&stdout, 500),
                excerpt(&stderr, 1500)
            ),
            case: self.case,
            outcome,
            message,
            status,
            seconds: self.started.elapsed().as_secs_f64(),
        }
    }
}

/// The first and last `max` bytes of `text`: a panic's message comes first, then its
/// backtrace (when RUST_BACKTRACE is set); GStreamer's and ONNX Runtime's last words come last.
fn excerpt(text: &str, max: usize) -> String {
    if text.len() <= 2 * max {
        return text.to_owned();
    }
    let (mut head, mut tail) = (max, text.len() - max);
    while !text.is_char_boundary(head) {
        head -= 1;
    }
    while !text.is_char_boundary(tail) {
        tail += 1;
    }
    format!("{}\n[...]\n{}", &text[..head], &text[tail..])
}

/// Removes the generated cases, even when the test fails.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

fn generate(out: &Path) -> Vec<Case> {
    let python = std::env::var_os("VIRTUAL_ENV")
        .map(|venv| PathBuf::from(venv).join("bin/python"))
        .unwrap_or_else(|| "python3".into());
    let script = format!(
        "{}/tests/fixtures/make_mutants.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let output = Command::new(&python)
        .arg(&script)
        .arg(out)
        .output()
        .unwrap_or_else(|err| panic!("{} {script}: {err}", python.display()));
    assert!(
        output.status.success(),
        "{} {script} {}: {}\n{}",
        python.display(),
        out.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let manifest = std::fs::read_to_string(out.join("cases.tsv")).expect("cases.tsv");
    manifest
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            let [name, category, location] = fields[..] else {
                panic!("cases.tsv: {line:?} is not name, category, location");
            };
            Case {
                name: name.into(),
                category: category.into(),
                location: location.into(),
            }
        })
        .collect()
}

/// Runs every case, `PARALLEL` children at a time.
fn run_all(cases: Vec<Case>, logs: &Path) -> Vec<Finished> {
    let mut waiting = cases.into_iter().enumerate();
    let mut running: Vec<Running> = Vec::new();
    let mut finished = Vec::new();
    loop {
        while running.len() < PARALLEL {
            let Some((index, case)) = waiting.next() else {
                break;
            };
            running.push(Running::start(case, logs, index));
        }
        if running.is_empty() {
            return finished;
        }
        let mut i = 0;
        while i < running.len() {
            if let Some((status, timed_out)) = running[i].poll() {
                finished.push(running.swap_remove(i).finish(status, timed_out));
            } else {
                i += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The counts per outcome, in total and per category, as a table.
fn table(results: &[Finished]) -> String {
    let mut rows: BTreeMap<&str, [usize; 6]> = BTreeMap::new();
    let mut total = [0usize; 6];
    for result in results {
        let column = OUTCOMES
            .iter()
            .position(|(o, _)| *o == result.outcome)
            .expect("a known outcome");
        rows.entry(&result.case.category).or_default()[column] += 1;
        total[column] += 1;
    }
    let mut text = format!("{:<10}{:>7}", "category", "cases");
    for (_, name) in OUTCOMES {
        write!(text, " | {name}").unwrap();
    }
    text.push('\n');
    let all = rows.into_iter().chain([("all", total)]);
    for (category, counts) in all {
        write!(text, "{category:<10}{:>7}", counts.iter().sum::<usize>()).unwrap();
        for ((_, name), count) in OUTCOMES.iter().zip(counts) {
            write!(text, " | {count:>width$}", width = name.len()).unwrap();
        }
        text.push('\n');
    }
    text
}

/// Writes to the real standard error, so that the counts show even when the test passes.
fn report(text: &str) {
    std::io::stderr().lock().write_all(text.as_bytes()).ok();
}

#[test]
fn broken_models_never_crash_hang_or_panic() {
    if std::env::var_os(LOCATION_VAR).is_some() {
        return; // a child runs the other test
    }
    let started = Instant::now();
    let dir = TempDir(std::env::temp_dir().join(format!("instseg-fuzz-{}", std::process::id())));
    std::fs::remove_dir_all(&dir.0).ok();
    let out = dir.0.join("cases");
    let logs = dir.0.join("logs");
    std::fs::create_dir_all(&logs).expect("a temporary directory");
    let mut cases = generate(&out);
    let generated = started.elapsed().as_secs_f64();
    assert!(
        cases.len() >= MIN_CASES,
        "only {} cases generated",
        cases.len()
    );
    // INSTSEG_FUZZ_ONLY=text runs only the cases whose category/name contains it (to debug)
    let only = std::env::var("INSTSEG_FUZZ_ONLY").ok();
    if let Some(only) = &only {
        cases.retain(|case| format!("{}/{}", case.category, case.name).contains(only.as_str()));
    }
    let count = cases.len();

    let mut results = run_all(cases, &logs);
    assert_eq!(results.len(), count, "every case ran");
    assert!(
        only.is_some() || count >= MIN_CASES,
        "only {count} cases ran"
    );
    results.sort_by(|a, b| (&a.case.category, &a.case.name).cmp(&(&b.case.category, &b.case.name)));
    let slowest = results
        .iter()
        .max_by(|a, b| a.seconds.total_cmp(&b.seconds))
        .expect("cases ran");
    let mut summary = format!(
        "\nfuzz_models: {count} broken models, generated in {generated:.1} s, run in {:.1} s \
         ({PARALLEL} at a time; slowest {} {:.1} s)\n",
        started.elapsed().as_secs_f64() - generated,
        slowest.case.name,
        slowest.seconds
    );
    summary += &table(&results);

    // the control: without it (say ONNX Runtime not found) every case would be "refused"
    if let Some(control) = results
        .iter()
        .find(|r| (r.case.category.as_str(), r.case.name.as_str()) == ("graph", "valid_colour"))
    {
        assert_eq!(
            control.outcome,
            Outcome::Ran,
            "{summary}\nthe valid colour model did not run (is ONNX Runtime found?): {:?}\n{}",
            control.message,
            control.output
        );
    }

    let mut failures = String::new();
    for result in &results {
        let case = &result.case;
        if matches!(
            result.outcome,
            Outcome::Crash | Outcome::Hang | Outcome::Panic
        ) {
            let (_, what) = OUTCOMES.iter().find(|(o, _)| *o == result.outcome).unwrap();
            writeln!(
                failures,
                "\n== {what}: {}/{} (model-location {:?}; {})\n{}",
                case.category, case.name, case.location, result.status, result.output
            )
            .unwrap();
        }
        if let Some(message) = &result.message {
            let own = if case.location.is_empty() {
                message.len()
            } else {
                message.replace(&case.location, "").len()
            };
            if own >= MAX_MESSAGE {
                writeln!(
                    failures,
                    "\n== error message of {} bytes: {}/{} (model-location {:?}): {}...",
                    message.len(),
                    case.category,
                    case.name,
                    case.location,
                    message.chars().take(300).collect::<String>()
                )
                .unwrap();
            }
        }
    }
    // INSTSEG_FUZZ_VERBOSE=1 lists every case with its outcome
    if std::env::var_os("INSTSEG_FUZZ_VERBOSE").is_some() {
        let mut list = String::new();
        for result in &results {
            let (_, what) = OUTCOMES.iter().find(|(o, _)| *o == result.outcome).unwrap();
            let message = result.message.as_deref().unwrap_or("");
            writeln!(
                list,
                "{}/{}: {what} in {:.2} s {}",
                result.case.category,
                result.case.name,
                result.seconds,
                message.chars().take(400).collect::<String>()
            )
            .unwrap();
        }
        report(&list);
    }
    report(&summary);
    assert!(
        failures.is_empty(),
        "{summary}\nbroken models that crashed, hung, panicked or gave long errors:\n{failures}"
    );
}
