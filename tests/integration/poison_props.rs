//! A property test of the Redis path: random hash fields, ids in any form,
//! timestamps, delays, priorities and payloads, written straight into the ingest
//! structures and sent through the ENQUEUE script, next to ordinary jobs. Whatever
//! the poison, every ordinary job succeeds, the daemon keeps working (a panicking
//! ingester would strand the ordinary jobs of later cases), every poison item ends
//! in a final ledger row or in the quarantine, and Redis is left empty.

use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};
use uuid::Uuid;

use crate::helpers::spawn_app;
use crate::poison_redis::{all_succeed, key, ordinary, quarantined_count, raw, wait_redis_empty};

/// How the ingest entry (or script id) is spelled.
#[derive(Debug, Clone)]
enum IdForm {
    Canonical,
    Upper,
    Braced,
    Garbage(Vec<u8>),
}

#[derive(Debug, Clone)]
enum Item {
    /// A job written by hand: `wrong_type` makes its key a string, not a hash.
    Hand {
        id: IdForm,
        wrong_type: bool,
        fields: Vec<Option<Vec<u8>>>,
    },
    /// A call of the ENQUEUE script with these arguments.
    Script { id: IdForm, args: Vec<Vec<u8>> },
}

fn id_form() -> impl Strategy<Value = IdForm> {
    prop_oneof![
        3 => Just(IdForm::Canonical),
        1 => Just(IdForm::Upper),
        1 => Just(IdForm::Braced),
        1 => prop::collection::vec(any::<u8>(), 0..40).prop_map(IdForm::Garbage),
    ]
}

fn bytes(values: &[&str]) -> impl Strategy<Value = Vec<u8>> + use<> {
    let fixed: Vec<Vec<u8>> = values.iter().map(|v| v.as_bytes().to_vec()).collect();
    prop_oneof![
        3 => prop::sample::select(fixed),
        1 => prop::collection::vec(any::<u8>(), 0..24),
    ]
}

/// Whole numbers, near misses and nonsense, as a producer might write them.
fn number() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        bytes(&[
            "0",
            "5",
            "-1000",
            "1000",
            "1001",
            "1e18",
            "1.5",
            "",
            "+3",
            " 7",
            "0x10",
            "99999999999999999999"
        ]),
        any::<i64>().prop_map(|n| n.to_string().into_bytes()),
    ]
}

/// Times in Unix ms: now (a valid job), or out of range or malformed.
fn time() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => Just(b"NOW".to_vec()),
        2 => number(),
        1 => bytes(&["253402300800000", "-62135596800000", "1e18"]),
    ]
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        bytes(&[
            "{}",
            r#"{"a": 1}"#,
            r#"{"name": "a\u0000b"}"#,
            r#"{"\u0000": 1}"#,
            "{not json",
            "[1, 2",
            r#""\ud800""#,
            "null",
        ]),
        Just(b"{\"x\": \"\xff\xfe\"}".to_vec()),
        (1usize..300).prop_map(|n| format!("{}{}", "[".repeat(n), "]".repeat(n)).into_bytes()),
        ".{0,40}".prop_map(|s: String| serde_json::json!({ "s": s }).to_string().into_bytes()),
    ]
}

fn kind() -> impl Strategy<Value = Vec<u8>> {
    bytes(&[
        "noop",
        "no-such-kind",
        "",
        "bad kind",
        "ünïcode",
        &"k".repeat(65),
    ])
}

fn item() -> impl Strategy<Value = Item> {
    let fields = (
        prop::option::weighted(0.9, kind()),
        prop::option::weighted(0.9, payload()),
        prop::option::weighted(0.7, number()),
        prop::option::weighted(0.7, number()),
        prop::option::weighted(0.8, time()),
        prop::option::weighted(0.8, time()),
    )
        .prop_map(|(a, b, c, d, e, f)| vec![a, b, c, d, e, f]);
    let delay = prop_oneof![bytes(&[
        "0",
        "10",
        "250",
        "1e18",
        "-1",
        "",
        "1000000000000000000",
        "2.5"
    ]),];
    prop_oneof![
        3 => (id_form(), prop::bool::weighted(0.15), fields)
            .prop_map(|(id, wrong_type, fields)| Item::Hand { id, wrong_type, fields }),
        2 => (id_form(), kind(), payload(), number(), number(), delay)
            .prop_map(|(id, k, p, pr, m, d)| Item::Script { id, args: vec![k, p, pr, m, d] }),
    ]
}

fn spell(form: &IdForm, id: Uuid) -> Vec<u8> {
    match form {
        IdForm::Canonical => id.to_string().into_bytes(),
        IdForm::Upper => id.to_string().to_uppercase().into_bytes(),
        IdForm::Braced => format!("{{{id}}}").into_bytes(),
        IdForm::Garbage(b) => b.clone(),
    }
}

/// What one item should end as.
enum Expect {
    /// A final row for this id, or a quarantine entry naming it.
    Ends(Uuid),
    /// One more quarantine entry without a job id.
    Quarantined,
    Nothing,
}

#[test]
fn random_poison_on_the_redis_path_never_holds_up_ordinary_jobs() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let app = rt.block_on(spawn_app());
    let daemon = rt.block_on(app.start_daemon());
    let script = jobrunner::broker::enqueue_script_source();
    let ingest = key(&app, "ingest");
    let mut runner = TestRunner::new(RunnerConfig {
        cases: 16,
        max_shrink_iters: 32,
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    let strategy = prop::collection::vec(item(), 1..6);
    let result = runner.run(&strategy, |items| {
        rt.block_on(async {
            let quarantined_before = quarantined_count(&app).await;
            let mut expect = Vec::new();
            let mut good = ordinary(&app, 2).await;
            for item in &items {
                let id = Uuid::now_v7();
                match item {
                    Item::Hand {
                        id: form,
                        wrong_type,
                        fields,
                    } => {
                        let entry = spell(form, id);
                        let mut job_key = key(&app, "job:").into_bytes();
                        job_key.extend_from_slice(&entry);
                        if *wrong_type {
                            raw(&app, &[b"SET", &job_key, b"x"]);
                        } else {
                            let now = chrono::Utc::now().timestamp_millis().to_string();
                            let names = [
                                "kind",
                                "payload",
                                "priority",
                                "max_attempts",
                                "created_ms",
                                "run_ms",
                            ];
                            let mut args: Vec<Vec<u8>> = vec![b"HSET".to_vec(), job_key.clone()];
                            // One field always, so the key exists.
                            args.extend([b"attempts".to_vec(), b"0".to_vec()]);
                            for (name, value) in names.iter().zip(fields) {
                                if let Some(v) = value {
                                    let v = if v == b"NOW" {
                                        now.clone().into_bytes()
                                    } else {
                                        v.clone()
                                    };
                                    args.extend([name.as_bytes().to_vec(), v]);
                                }
                            }
                            let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
                            let reply = raw(&app, &args);
                            prop_assert!(reply.starts_with(':'), "HSET: {reply}");
                        }
                        raw(&app, &[b"RPUSH", ingest.as_bytes(), &entry]);
                        let parsed = std::str::from_utf8(&entry)
                            .ok()
                            .and_then(|t| Uuid::try_parse(t).ok());
                        expect.push(match parsed {
                            Some(id) => Expect::Ends(id),
                            None => Expect::Quarantined,
                        });
                    }
                    Item::Script { id: form, args } => {
                        let entry = spell(form, id);
                        let mut job_key = key(&app, "job:").into_bytes();
                        job_key.extend_from_slice(&entry);
                        let mut call: Vec<&[u8]> = vec![
                            b"EVAL",
                            script.as_bytes(),
                            b"2",
                            &job_key,
                            ingest.as_bytes(),
                            &entry,
                        ];
                        call.extend(args.iter().map(Vec::as_slice));
                        let reply = raw(&app, &call);
                        if reply == ":1" {
                            prop_assert!(matches!(form, IdForm::Canonical), "accepted {form:?}");
                            expect.push(Expect::Ends(id));
                        } else {
                            prop_assert!(reply.starts_with("-ERR jobrunner: "), "reply {reply:?}");
                            expect.push(Expect::Nothing);
                        }
                    }
                }
            }
            good.extend(ordinary(&app, 2).await);
            all_succeed(&app, &good, 10).await;
            for e in &expect {
                if let Expect::Ends(id) = e {
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                    loop {
                        let row = app.ledger.job(*id).await.ok();
                        if row.as_ref().is_some_and(|j| j.status.is_final()) {
                            break;
                        }
                        if !app
                            .ledger
                            .quarantined(Some(*id), 1)
                            .await
                            .unwrap()
                            .is_empty()
                        {
                            break;
                        }
                        if tokio::time::Instant::now() > deadline {
                            return Err(TestCaseError::fail(format!(
                                "job {id} neither final nor quarantined: {row:?}"
                            )));
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            let garbage = expect
                .iter()
                .filter(|e| matches!(e, Expect::Quarantined))
                .count() as i64;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while quarantined_count(&app).await < quarantined_before + garbage {
                if tokio::time::Instant::now() > deadline {
                    return Err(TestCaseError::fail("garbage entries were not quarantined"));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            wait_redis_empty(&app, 10).await;
            Ok(())
        })
    });
    rt.block_on(daemon.stop());
    if let Err(e) = result {
        panic!("{e}");
    }
}
