//! The corpus of pickles CPython wrote (tests/fixtures/pickle/, made by make.py
//! there): every listed type under protocols 2 to 5, and globals that must be
//! refused.

use std::path::PathBuf;

use super::{decode, encode};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pickle")
}

fn expected() -> serde_json::Value {
    let text = std::fs::read_to_string(dir().join("expected.json")).expect("expected.json");
    serde_json::from_str(&text).expect("expected.json is JSON")
}

fn blob(name: &str) -> Vec<u8> {
    std::fs::read(dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn every_listed_type_decodes_to_the_json_python_expects_under_protocols_2_to_5() {
    let expected = expected();
    let values = expected["values"].as_object().expect("values");
    assert!(values.len() >= 20, "the corpus lost cases");
    for (name, want) in values {
        for protocol in 2..=5 {
            let file = format!("{name}.p{protocol}.pickle");
            let value = decode(&blob(&file)).unwrap_or_else(|e| panic!("{file}: {e}"));
            let json = value.to_json().unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(&json, want, "{file}");
        }
    }
}

#[test]
fn a_decoded_value_written_again_reads_back_the_same() {
    let expected = expected();
    for name in expected["values"].as_object().expect("values").keys() {
        let value = decode(&blob(&format!("{name}.p4.pickle"))).expect("decodes");
        assert_eq!(decode(&encode(&value)).as_ref(), Ok(&value), "{name}");
    }
}

#[test]
fn globals_outside_the_list_are_refused_naming_them() {
    let expected = expected();
    let refused = expected["refused"].as_object().expect("refused");
    assert_eq!(refused.len(), 12);
    for (case, want) in refused {
        let file = format!("refused_{case}.pickle");
        let error = decode(&blob(&file)).expect_err(&file).to_string();
        let want = want.as_str().expect("text");
        assert!(error.contains(want), "{file}: {error:?} lacks {want:?}");
    }
}
