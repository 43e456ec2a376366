//! arq's wire format: the job body its client writes to `arq:job:<id>` (a
//! serialized dict `{t, f, a, k, et}`: try, function, args, kwargs, enqueue
//! time in ms), how such a call becomes a jobrunner job, and the result record
//! arq's `Job.result()` reads (`{t, f, a, k, et, s, r, st, ft, q, id}`), written
//! in the serializer the job came in.

use serde_json::{Map, Value as Json, json};
use uuid::Uuid;

use super::config::ArqConfig;
use super::pickle::{self, Value};

/// The two serializers arq's producers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serializer {
    /// arq's default, `pickle.dumps`.
    Pickle,
    /// `job_serializer=json.dumps`.
    Json,
}

/// A job body as arq's client wrote it.
#[derive(Debug, Clone, PartialEq)]
pub struct ArqJob {
    pub function: String,
    pub args: Vec<Value>,
    pub kwargs: Vec<(Value, Value)>,
    pub job_try: Option<i64>,
    pub enqueue_ms: i64,
    pub serializer: Serializer,
}

/// A call mapped to a jobrunner job.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub kind: String,
    pub queue: String,
    /// The payload as JSON text.
    pub payload: String,
}

/// How a job ended, for its result record.
#[derive(Debug, Clone, PartialEq)]
pub enum Ended {
    Succeeded(Json),
    Dead(String),
    Cancelled,
}

/// Times and names the result record carries besides the job body.
#[derive(Debug, Clone)]
pub struct Record<'a> {
    pub arq_id: &'a str,
    pub arq_queue: &'a str,
    pub attempts: i64,
    pub started_ms: i64,
    pub finished_ms: i64,
}

/// Which serializer wrote `body`: JSON text starts with `{` (after blanks);
/// anything else is read as a pickle.
pub fn serializer_of(body: &[u8]) -> Serializer {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => Serializer::Json,
        _ => Serializer::Pickle,
    }
}

/// Reads a job body. An error says what is wrong, for the job's `dead` status.
pub fn read_job(body: &[u8]) -> Result<ArqJob, String> {
    let serializer = serializer_of(body);
    let root = match serializer {
        Serializer::Pickle => pickle::decode(body).map_err(|e| format!("arq job body: {e}"))?,
        Serializer::Json => {
            let json: Json = serde_json::from_slice(body)
                .map_err(|e| format!("arq job body is not valid JSON: {e}"))?;
            Value::from_json(&json)
        }
    };
    let Value::Dict(fields) = root else {
        return Err("arq job body is not a dict".into());
    };
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| matches!(k, Value::Str(s) if s == name))
            .map(|(_, v)| v)
    };
    let function = match field("f") {
        Some(Value::Str(f)) => f.clone(),
        _ => return Err("arq job body has no function name (f)".into()),
    };
    let args = match field("a") {
        Some(Value::Tuple(a) | Value::List(a)) => a.clone(),
        None | Some(Value::None) => Vec::new(),
        _ => {
            return Err(format!(
                "arq job {function:?}: its args (a) are not a tuple"
            ));
        }
    };
    let kwargs = match field("k") {
        Some(Value::Dict(k)) => k.clone(),
        None | Some(Value::None) => Vec::new(),
        _ => {
            return Err(format!(
                "arq job {function:?}: its kwargs (k) are not a dict"
            ));
        }
    };
    let int = |v: Option<&Value>| match v {
        Some(Value::Int(i)) => i64::try_from(*i).ok(),
        Some(Value::Float(f)) => Some(*f as i64),
        _ => None,
    };
    Ok(ArqJob {
        job_try: int(field("t")),
        enqueue_ms: int(field("et")).unwrap_or(0),
        function,
        args,
        kwargs,
        serializer,
    })
}

/// The jobrunner id of arq job `arq_id`: the id itself when it is a UUID (arq's
/// default ids are `uuid4().hex`), otherwise a UUID derived from it (version 5),
/// so every daemon, and every retry of a read, gives one job the same id.
pub fn job_id(arq_id: &str) -> Uuid {
    Uuid::try_parse(arq_id).unwrap_or_else(|_| Uuid::new_v5(&ARQ_NAMESPACE, arq_id.as_bytes()))
}

/// The namespace of derived ids (a fixed random UUID).
const ARQ_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_3b2e_9a47_4d05_b3c8_51e0_7d2a_9f64);

/// Whether `name` is a valid kind name: 1-64 letters, digits, dots, dashes or
/// underscores (what the ENQUEUE script accepts).
pub fn is_kind_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Maps an arq call to a job: the function's kind (its own name unless
/// configured), and its payload: a lone positional dict is the payload, keyword
/// arguments are merged into it (or form it), other positional arguments are
/// named by `[arq.functions.NAME] args`.
pub fn to_call(job: &ArqJob, config: &ArqConfig) -> Result<Call, String> {
    let f = config.functions.get(&job.function);
    let kind = f
        .and_then(|f| f.kind.clone())
        .unwrap_or_else(|| job.function.clone());
    if !is_kind_name(&kind) {
        return Err(format!(
            "arq function {:?} is no kind name (1-64 letters, digits, dots, dashes or underscores); map it with [arq.functions] kind",
            job.function
        ));
    }
    let queue = f
        .and_then(|f| f.queue.clone())
        .unwrap_or_else(|| config.queue.clone());
    let names = f.map(|f| f.args.as_slice()).unwrap_or_default();
    let json = |v: &Value, what: &str| {
        v.to_json()
            .map_err(|e| format!("arq job {:?}: {what}: {e}", job.function))
    };
    let mut payload = Map::new();
    let lone_dict =
        names.is_empty() && job.args.len() == 1 && matches!(job.args[0], Value::Dict(_));
    if lone_dict {
        if let Json::Object(map) = json(&job.args[0], "its argument")? {
            payload = map;
        }
    } else if job.args.len() > names.len() {
        return Err(format!(
            "arq function {:?} got {} positional arguments and [arq.functions.{}] args names {}: name them there, or pass keyword arguments",
            job.function,
            job.args.len(),
            job.function,
            names.len()
        ));
    } else {
        for (name, arg) in names.iter().zip(&job.args) {
            payload.insert(name.clone(), json(arg, &format!("argument {name}"))?);
        }
    }
    for (k, v) in &job.kwargs {
        let key = match k {
            Value::Str(s) => s.clone(),
            other => json(other, "a keyword")?.to_string(),
        };
        let value = json(v, &format!("keyword argument {key}"))?;
        payload.insert(key, value);
    }
    Ok(Call {
        kind,
        queue,
        payload: Json::Object(payload).to_string(),
    })
}

/// The result record arq's `Job.result()` and `Job.status()` read, in the
/// serializer the job came in. With pickle a failed job's `r` is an exception
/// `Job.result()` raises: `arq.worker.JobExecutionFailed(error)` for a dead job,
/// `asyncio.CancelledError()` for a cancelled (aborted) one. With JSON it is the
/// error text, which `Job.result()` raises as a `SerializationError`.
pub fn result_record(
    job: Option<&ArqJob>,
    serializer: Serializer,
    ended: &Ended,
    meta: &Record<'_>,
) -> Vec<u8> {
    let (function, args, kwargs, enqueue_ms) = match job {
        Some(j) => (
            j.function.clone(),
            j.args.clone(),
            j.kwargs.clone(),
            j.enqueue_ms,
        ),
        None => ("<unknown>".to_owned(), Vec::new(), Vec::new(), 0),
    };
    let success = matches!(ended, Ended::Succeeded(_));
    match serializer {
        Serializer::Pickle => {
            let r = match ended {
                Ended::Succeeded(value) => Value::from_json(value),
                Ended::Dead(error) => Value::Exception {
                    module: "arq.worker",
                    name: "JobExecutionFailed",
                    args: vec![Value::Str(error.clone())],
                },
                Ended::Cancelled => Value::Exception {
                    module: "asyncio.exceptions",
                    name: "CancelledError",
                    args: Vec::new(),
                },
            };
            let s = |k: &str| Value::Str(k.to_owned());
            let int = |i: i64| Value::Int(i as i128);
            pickle::encode(&Value::Dict(vec![
                (s("t"), int(meta.attempts)),
                (s("f"), Value::Str(function)),
                (s("a"), Value::Tuple(args)),
                (s("k"), Value::Dict(kwargs)),
                (s("et"), int(enqueue_ms)),
                (s("s"), Value::Bool(success)),
                (s("r"), r),
                (s("st"), int(meta.started_ms)),
                (s("ft"), int(meta.finished_ms)),
                (s("q"), s(meta.arq_queue)),
                (s("id"), s(meta.arq_id)),
            ]))
        }
        Serializer::Json => {
            let plain = |v: Value| v.to_json().unwrap_or(Json::Null);
            let r = match ended {
                Ended::Succeeded(value) => value.clone(),
                Ended::Dead(error) => Json::String(error.clone()),
                Ended::Cancelled => Json::String("the job was cancelled".into()),
            };
            json!({
                "t": meta.attempts,
                "f": function,
                "a": plain(Value::List(args)),
                "k": plain(Value::Dict(kwargs)),
                "et": enqueue_ms,
                "s": success,
                "r": r,
                "st": meta.started_ms,
                "ft": meta.finished_ms,
                "q": meta.arq_queue,
                "id": meta.arq_id,
            })
            .to_string()
            .into_bytes()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arq::config::ArqFunction;

    fn job(args: Vec<Value>, kwargs: Vec<(&str, Value)>) -> ArqJob {
        ArqJob {
            function: "generate_campaign".into(),
            args,
            kwargs: kwargs
                .into_iter()
                .map(|(k, v)| (Value::Str(k.into()), v))
                .collect(),
            job_try: None,
            enqueue_ms: 0,
            serializer: Serializer::Pickle,
        }
    }

    #[test]
    fn a_lone_positional_dict_is_the_payload() {
        let dict = Value::Dict(vec![(Value::Str("ms".into()), Value::Int(5))]);
        let call = to_call(&job(vec![dict], vec![]), &ArqConfig::default()).unwrap();
        assert_eq!(call.payload, r#"{"ms":5}"#);
        assert_eq!(call.kind, "generate_campaign");
        assert_eq!(call.queue, "default");
    }

    #[test]
    fn positional_arguments_are_named_by_config_and_keywords_join_them() {
        let mut config = ArqConfig::default();
        config.functions.insert(
            "generate_campaign".into(),
            ArqFunction {
                kind: Some("campaign-planner".into()),
                args: vec!["campaign_id".into()],
                queue: Some("content".into()),
            },
        );
        let call = to_call(
            &job(vec![Value::Int(42)], vec![("dry_run", Value::Bool(true))]),
            &config,
        )
        .unwrap();
        assert_eq!(call.kind, "campaign-planner");
        assert_eq!(call.queue, "content");
        assert_eq!(call.payload, r#"{"campaign_id":42,"dry_run":true}"#);
    }

    #[test]
    fn unnamed_positional_arguments_are_refused_with_the_fix() {
        let error = to_call(&job(vec![Value::Int(1)], vec![]), &ArqConfig::default()).unwrap_err();
        assert!(
            error.contains("[arq.functions.generate_campaign] args"),
            "{error}"
        );
    }

    #[test]
    fn uuid_shaped_arq_ids_are_the_job_id_and_others_map_stably() {
        let hex = "8a7c0e3f5b9d4c2a9e1f0a2b3c4d5e6f";
        assert_eq!(job_id(hex).simple().to_string(), hex);
        assert_eq!(job_id("campaign-7"), job_id("campaign-7"));
        assert_ne!(job_id("campaign-7"), job_id("campaign-8"));
    }

    #[test]
    fn a_json_body_reads_like_a_pickled_one() {
        let body = br#"{"t": null, "f": "noop", "a": [], "k": {"x": 1}, "et": 1700000000000}"#;
        let job = read_job(body).unwrap();
        assert_eq!(job.serializer, Serializer::Json);
        assert_eq!(job.enqueue_ms, 1_700_000_000_000);
        let call = to_call(&job, &ArqConfig::default()).unwrap();
        assert_eq!(call.payload, r#"{"x":1}"#);
    }

    #[test]
    fn a_json_result_record_carries_the_error_text_when_the_job_died() {
        let meta = Record {
            arq_id: "abc",
            arq_queue: "arq:queue",
            attempts: 3,
            started_ms: 1,
            finished_ms: 2,
        };
        let record = result_record(None, Serializer::Json, &Ended::Dead("boom".into()), &meta);
        let json: Json = serde_json::from_slice(&record).unwrap();
        assert_eq!(json["s"], false);
        assert_eq!(json["r"], "boom");
        assert_eq!(json["id"], "abc");
    }
}
