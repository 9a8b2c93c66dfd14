// SPDX-License-Identifier: MIT
//! Copies of fixture models with other `metadata_props`, written without an ONNX library: a
//! model file is a protobuf `ModelProto` whose field 14 repeats `{key = 1, value = 2}` entries,
//! so the top-level fields are copied as they are, except the entries being replaced.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

const METADATA_PROPS: u64 = 14;

fn read_varint(bytes: &[u8], at: &mut usize) -> u64 {
    let mut value = 0;
    for shift in (0..64).step_by(7) {
        let byte = bytes[*at];
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            break;
        }
    }
    value
}

fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn write_bytes_field(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    write_varint(out, field << 3 | 2);
    write_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// The key of a serialized `StringStringEntryProto`.
fn entry_key(entry: &[u8]) -> Option<&[u8]> {
    let mut at = 0;
    while at < entry.len() {
        let tag = read_varint(entry, &mut at);
        let len = read_varint(entry, &mut at) as usize;
        if tag == (1 << 3 | 2) {
            return Some(&entry[at..at + len]);
        }
        at += len;
    }
    None
}

/// `model` with each `(key, value)` of `changes` set (`None`: removed).
pub fn with_metadata(model: &[u8], changes: &[(&str, Option<&str>)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(model.len());
    let mut at = 0;
    while at < model.len() {
        let start = at;
        let tag = read_varint(model, &mut at);
        match tag & 7 {
            0 => {
                read_varint(model, &mut at);
            }
            1 => at += 8,
            5 => at += 4,
            2 => {
                let len = read_varint(model, &mut at) as usize;
                let payload = &model[at..at + len];
                at += len;
                if tag >> 3 == METADATA_PROPS
                    && entry_key(payload)
                        .is_some_and(|key| changes.iter().any(|(k, _)| k.as_bytes() == key))
                {
                    continue;
                }
            }
            wire => panic!("unexpected protobuf wire type {wire}"),
        }
        out.extend_from_slice(&model[start..at]);
    }
    for (key, value) in changes {
        if let Some(value) = value {
            let mut entry = Vec::new();
            write_bytes_field(&mut entry, 1, key.as_bytes());
            write_bytes_field(&mut entry, 2, value.as_bytes());
            write_bytes_field(&mut out, METADATA_PROPS, &entry);
        }
    }
    out
}

/// Writes `fixture` with `changes` to a temporary file named after `name`; returns its path.
pub fn fixture_with_metadata(
    fixture: &str,
    name: &str,
    changes: &[(&str, Option<&str>)],
) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(fixture);
    let model = std::fs::read(&source).expect("the fixture is readable");
    let dir = std::env::temp_dir().join(format!("instseg-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let path = dir.join(format!("{name}.onnx"));
    std::fs::write(&path, with_metadata(&model, changes)).expect("the model is written");
    path
}
