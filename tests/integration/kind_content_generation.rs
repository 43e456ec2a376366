//! The `content-generation` kind against real Postgres, with a fake
//! OpenAI-compatible endpoint served by the test on 127.0.0.1.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Timelike, Utc};
use jobrunner::config::{Config, KindConfig};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestApp, spawn_app};
use jobrunner::ledger::Status;

const KIND: &str = "content-generation";

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
struct Post {
    id: Uuid,
    channel: String,
    scheduled_for: DateTime<Utc>,
    /// `scheduled_for` on the campaign's wall clock, as Postgres converts it.
    local: NaiveDateTime,
    title: String,
    body: String,
    hashtags: Vec<String>,
    status: String,
}

#[derive(Debug, sqlx::FromRow)]
struct Campaign {
    status: String,
    last_error: Option<String>,
    job_id: Option<Uuid>,
}

struct NewCampaign<'a> {
    month: &'a str,
    timezone: &'a str,
    posts_per_week: i32,
    channels: &'a [&'a str],
    generator: &'a str,
}

impl Default for NewCampaign<'_> {
    fn default() -> Self {
        NewCampaign {
            month: "2026-11",
            timezone: "Europe/Berlin",
            posts_per_week: 3,
            channels: &["linkedin", "instagram"],
            generator: "template",
        }
    }
}

async fn insert_campaign(app: &TestApp, c: NewCampaign<'_>) -> Uuid {
    sqlx::query_scalar(
        "INSERT INTO content_campaigns
             (tenant, month, topic, brand, channels, posts_per_week, timezone, generator)
         VALUES ('acme-tenant', $1, 'remote work', 'Acme', $2, $3, $4, $5)
         RETURNING id",
    )
    .bind(c.month)
    .bind(c.channels.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    .bind(c.posts_per_week)
    .bind(c.timezone)
    .bind(c.generator)
    .fetch_one(app.ledger.pool())
    .await
    .expect("insert campaign")
}

async fn posts(app: &TestApp, campaign: Uuid) -> Vec<Post> {
    sqlx::query_as(
        "SELECT p.id, p.channel, p.scheduled_for, p.scheduled_for AT TIME ZONE c.timezone AS local,
                p.title, p.body, p.hashtags, p.status
         FROM content_posts p JOIN content_campaigns c ON c.id = p.campaign_id
         WHERE p.campaign_id = $1
         ORDER BY p.channel, p.scheduled_for",
    )
    .bind(campaign)
    .fetch_all(app.ledger.pool())
    .await
    .expect("read posts")
}

async fn campaign(app: &TestApp, id: Uuid) -> Campaign {
    sqlx::query_as("SELECT status, last_error, job_id FROM content_campaigns WHERE id = $1")
        .bind(id)
        .fetch_one(app.ledger.pool())
        .await
        .expect("read campaign")
}

async fn run_campaign(app: &TestApp, id: Uuid) -> jobrunner::ledger::Job {
    let job = app.enqueue(KIND, json!({ "campaign_id": id })).await;
    app.wait_final(job, 30).await
}

fn ten_oclock() -> NaiveTime {
    NaiveTime::from_hms_opt(10, 0, 0).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_campaign_is_ready_with_thirteen_posts_per_channel_at_ten_local() {
    let app = spawn_app().await;
    let daemon = app.start_daemon().await;
    let id = insert_campaign(&app, NewCampaign::default()).await;

    let job = run_campaign(&app, id).await;
    assert_eq!(job.status, Status::Succeeded, "{job:?}");
    assert_eq!(job.result.as_ref().unwrap()["posts"], 26);

    let row = campaign(&app, id).await;
    assert_eq!((row.status.as_str(), row.last_error), ("ready", None));
    assert_eq!(row.job_id, Some(job.id));
    let posts = posts(&app, id).await;
    // November 2026 has 30 days: four weeks of 3, and day 29 starts a fifth.
    for channel in ["linkedin", "instagram"] {
        assert_eq!(posts.iter().filter(|p| p.channel == channel).count(), 13);
    }
    let first = NaiveDate::from_ymd_opt(2026, 11, 1).unwrap();
    let last = NaiveDate::from_ymd_opt(2026, 11, 30).unwrap();
    for post in &posts {
        assert!((first..=last).contains(&post.local.date()), "{post:?}");
        assert_eq!(post.local.time(), ten_oclock(), "{post:?}");
        assert_eq!(post.status, "draft");
        assert!(!post.title.is_empty() && !post.body.is_empty());
        assert!(
            post.hashtags.contains(&"#RemoteWork".to_owned()),
            "{post:?}"
        );
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_replaces_the_drafts_and_keeps_posts_a_person_approved() {
    let app = spawn_app().await;
    let daemon = app.start_daemon().await;
    let id = insert_campaign(&app, NewCampaign::default()).await;
    assert_eq!(run_campaign(&app, id).await.status, Status::Succeeded);
    let before = posts(&app, id).await;
    let approved = before[0].id;
    sqlx::query("UPDATE content_posts SET status = 'approved' WHERE id = $1")
        .bind(approved)
        .execute(app.ledger.pool())
        .await
        .unwrap();

    let job = run_campaign(&app, id).await;
    assert_eq!(job.status, Status::Succeeded, "{job:?}");
    assert_eq!(job.result.as_ref().unwrap()["kept"], 1);
    let after = posts(&app, id).await;
    assert_eq!(after.len(), before.len(), "a re-run never duplicates");
    // Drafts are deleted and inserted again (new ids, same text: the template is
    // deterministic); the approved post is the same row.
    for (old, new) in before.iter().zip(&after) {
        assert_eq!(
            (
                &old.channel,
                old.scheduled_for,
                &old.title,
                &old.body,
                &old.hashtags
            ),
            (
                &new.channel,
                new.scheduled_for,
                &new.title,
                &new.body,
                &new.hashtags
            )
        );
        if old.id == approved {
            assert_eq!((new.id, new.status.as_str()), (approved, "approved"));
        } else {
            assert_ne!(old.id, new.id);
        }
    }
    assert_eq!(campaign(&app, id).await.job_id, Some(job.id));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_stay_at_ten_local_across_the_march_dst_change_in_berlin() {
    let app = spawn_app().await;
    let daemon = app.start_daemon().await;
    let id = insert_campaign(
        &app,
        NewCampaign {
            month: "2026-03",
            posts_per_week: 7,
            channels: &["x"],
            ..NewCampaign::default()
        },
    )
    .await;
    assert_eq!(run_campaign(&app, id).await.status, Status::Succeeded);
    let posts = posts(&app, id).await;
    assert_eq!(posts.len(), 31);
    assert!(posts.iter().all(|p| p.local.time() == ten_oclock()));
    // Summer time starts on 29 March: 10:00 is 09:00 UTC before and 08:00 after.
    assert_eq!(posts[27].scheduled_for.hour(), 9);
    assert_eq!(posts[28].scheduled_for.hour(), 8);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_payloads_end_dead_with_readable_errors() {
    let app = spawn_app().await;
    let daemon = app.start_daemon().await;
    let missing = app.enqueue(KIND, json!({})).await;
    let not_uuid = app
        .enqueue(KIND, json!({"campaign_id": "campaign-7"}))
        .await;
    let unknown = Uuid::now_v7();
    let absent = app.enqueue(KIND, json!({"campaign_id": unknown})).await;

    for (id, expected) in [
        (
            missing,
            "bad payload: missing field `campaign_id`".to_owned(),
        ),
        (
            not_uuid,
            "bad payload: campaign_id `campaign-7` is not a UUID".to_owned(),
        ),
        (absent, format!("content campaign {unknown} not found")),
    ] {
        let job = app.wait_final(id, 15).await;
        assert_eq!((job.status.as_str(), job.attempts), ("dead", 1), "{job:?}");
        assert_eq!(job.last_error.as_deref(), Some(expected.as_str()));
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_time_zone_ends_dead_and_fails_the_campaign() {
    let app = spawn_app().await;
    let daemon = app.start_daemon().await;
    let id = insert_campaign(
        &app,
        NewCampaign {
            timezone: "Mars/Olympus",
            ..NewCampaign::default()
        },
    )
    .await;
    let job = run_campaign(&app, id).await;
    assert_eq!((job.status.as_str(), job.attempts), ("dead", 1));
    let expected = format!(
        "content campaign {id}: unknown time zone `Mars/Olympus` (expected an IANA name such as Europe/Berlin)"
    );
    assert_eq!(job.last_error.as_deref(), Some(expected.as_str()));
    let row = campaign(&app, id).await;
    assert_eq!(row.status, "failed");
    assert_eq!(row.last_error.as_deref(), Some(expected.as_str()));
    assert!(posts(&app, id).await.is_empty());
    daemon.stop().await;
}

// ---- the openai generator, against a fake endpoint ----

/// The API key the fake server expects. The kind reads its key from the variable
/// named in the config; the test names one that cargo sets for every test process,
/// because setting a variable here would be `unsafe` with other threads running.
const KEY_ENV: &str = "CARGO_PKG_NAME";
const MODEL: &str = "test-model";

type Reply = dyn Fn(usize, &Value) -> Response + Send + Sync;

/// A chat-completions endpoint on 127.0.0.1 that checks the key and model, counts
/// requests and the most in flight at once, and answers with `reply(n, body)`.
#[derive(Clone)]
struct FakeOpenAi {
    url: String,
    hits: Arc<AtomicUsize>,
    in_flight: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    reply: Arc<Reply>,
}

impl FakeOpenAi {
    async fn start(
        reply: impl Fn(usize, &Value) -> Response + Send + Sync + 'static,
    ) -> FakeOpenAi {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake = FakeOpenAi {
            url: format!("http://{}/v1", listener.local_addr().unwrap()),
            hits: Arc::default(),
            in_flight: Arc::default(),
            peak: Arc::default(),
            reply: Arc::new(reply),
        };
        let app = axum::Router::new()
            .route("/v1/chat/completions", axum::routing::post(completions))
            .with_state(fake.clone());
        // The server lives as long as the test's runtime.
        tokio::spawn(async move { axum::serve(listener, app).await });
        fake
    }

    /// A config whose openai generator points here.
    fn config(&self, app: &TestApp) -> Config {
        let mut config = app.config.clone();
        let mut content: jobrunner_kinds::ContentGenerationConfig = config.section();
        content.openai_base_url = self.url.clone();
        content.openai_model = MODEL.into();
        content.openai_api_key_env = KEY_ENV.into();
        content.request_timeout = Duration::from_secs(5);
        content.max_concurrent_drafts = 2;
        config.set_section(&content);
        config
    }
}

async fn completions(
    State(fake): State<FakeOpenAi>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let n = fake.hits.fetch_add(1, Ordering::SeqCst);
    let key = std::env::var(KEY_ENV).expect("cargo sets CARGO_PKG_NAME for tests");
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if auth != Some(format!("Bearer {key}").as_str()) {
        return (StatusCode::UNAUTHORIZED, format!("bad key: {auth:?}")).into_response();
    }
    if body["model"] != MODEL {
        return (
            StatusCode::BAD_REQUEST,
            format!("wrong model {}", body["model"]),
        )
            .into_response();
    }
    let now = fake.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    fake.peak.fetch_max(now, Ordering::SeqCst);
    // Long enough for concurrent requests to overlap.
    tokio::time::sleep(Duration::from_millis(20)).await;
    fake.in_flight.fetch_sub(1, Ordering::SeqCst);
    (fake.reply)(n, &body)
}

/// A good reply, fenced the way models like to, echoing the request's channel.
fn good_reply(body: &Value) -> Response {
    let prompt = body["messages"][1]["content"].as_str().unwrap_or_default();
    let channel = prompt
        .lines()
        .find_map(|l| l.strip_prefix("Channel: "))
        .unwrap_or("?");
    let content = format!(
        "```json\n{}\n```",
        json!({"title": format!("AI post for {channel}"), "body": "Written by a model.", "hashtags": ["ai", "#RemoteWork"]})
    );
    Json(json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}))
        .into_response()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_generator_drafts_every_post_with_bounded_concurrency() {
    let app = spawn_app().await;
    let fake = FakeOpenAi::start(|_, body| good_reply(body)).await;
    let config = fake.config(&app);
    let daemon = app
        .start_daemon_with(config.clone(), jobrunner_kinds::registry(&config))
        .await;
    let id = insert_campaign(
        &app,
        NewCampaign {
            posts_per_week: 2,
            channels: &["linkedin", "x"],
            generator: "openai",
            ..NewCampaign::default()
        },
    )
    .await;

    let job = run_campaign(&app, id).await;
    assert_eq!(job.status, Status::Succeeded, "{job:?}");
    let posts = posts(&app, id).await;
    // Two a week: days 1 and 4 of each week, and day 29 → 9 per channel.
    assert_eq!(posts.len(), 18);
    assert_eq!(fake.hits.load(Ordering::SeqCst), 18);
    assert!(
        fake.peak.load(Ordering::SeqCst) <= 2,
        "max_concurrent_drafts"
    );
    let x = posts.iter().find(|p| p.channel == "x").unwrap();
    assert_eq!(x.title, "AI post for x");
    assert_eq!(x.hashtags, ["#ai", "#RemoteWork"]);
    assert_eq!(campaign(&app, id).await.status, "ready");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_is_retried_after_that_wait_and_then_succeeds() {
    let app = spawn_app().await;
    let fake = FakeOpenAi::start(|n, body| {
        if n == 0 {
            (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, "1")],
                "rate limited",
            )
                .into_response()
        } else {
            good_reply(body)
        }
    })
    .await;
    let mut config = fake.config(&app);
    // A backoff of an hour: only honouring Retry-After lets the test finish.
    let mut kind = KindConfig {
        max_attempts: 3,
        ..KindConfig::default()
    };
    kind.backoff.base = Duration::from_secs(3600);
    kind.backoff.max = Duration::from_secs(3600);
    config.kinds.insert(KIND.into(), kind);
    let daemon = app
        .start_daemon_with(config.clone(), jobrunner_kinds::registry(&config))
        .await;
    let id = insert_campaign(
        &app,
        NewCampaign {
            posts_per_week: 1,
            channels: &["x"],
            generator: "openai",
            ..NewCampaign::default()
        },
    )
    .await;

    let job = app.enqueue(KIND, json!({ "campaign_id": id })).await;
    let job = app.wait_final(job, 20).await;
    assert_eq!(
        (job.status.as_str(), job.attempts),
        ("succeeded", 2),
        "{job:?}"
    );
    assert!(
        job.last_error.as_deref().unwrap().contains("429"),
        "{job:?}"
    );
    assert_eq!(campaign(&app, id).await.status, "ready");
    assert_eq!(posts(&app, id).await.len(), 5);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_ends_dead_and_fails_the_campaign_with_the_upstream_message() {
    let app = spawn_app().await;
    let fake = FakeOpenAi::start(|_, _| {
        (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {"message": "Unknown parameter: 'temperature_x'"}})),
        )
            .into_response()
    })
    .await;
    let config = fake.config(&app);
    let daemon = app
        .start_daemon_with(config.clone(), jobrunner_kinds::registry(&config))
        .await;
    let id = insert_campaign(
        &app,
        NewCampaign {
            generator: "openai",
            ..NewCampaign::default()
        },
    )
    .await;

    let job = run_campaign(&app, id).await;
    assert_eq!((job.status.as_str(), job.attempts), ("dead", 1), "{job:?}");
    let error = job.last_error.unwrap();
    assert!(
        error.starts_with(&format!("content campaign {id}, ")),
        "{error}"
    );
    assert!(error.contains("openai returned 400 Bad Request"), "{error}");
    assert!(
        error.contains("Unknown parameter: 'temperature_x'"),
        "{error}"
    );
    let row = campaign(&app, id).await;
    assert_eq!(row.status, "failed");
    assert_eq!(row.last_error.as_deref(), Some(error.as_str()));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_api_key_variable_is_named_and_fails_the_campaign() {
    let app = spawn_app().await;
    let mut config = app.config.clone();
    let unset = format!("JOBRUNNER_TEST_UNSET_{}", Uuid::now_v7().simple());
    let mut content: jobrunner_kinds::ContentGenerationConfig = config.section();
    content.openai_api_key_env = unset.clone();
    config.set_section(&content);
    let daemon = app
        .start_daemon_with(config.clone(), jobrunner_kinds::registry(&config))
        .await;
    let id = insert_campaign(
        &app,
        NewCampaign {
            generator: "openai",
            ..NewCampaign::default()
        },
    )
    .await;

    let job = run_campaign(&app, id).await;
    assert_eq!((job.status.as_str(), job.attempts), ("dead", 1), "{job:?}");
    let error = job.last_error.unwrap();
    assert!(
        error.contains(&format!("environment variable {unset}")),
        "{error}"
    );
    assert_eq!(campaign(&app, id).await.status, "failed");
    daemon.stop().await;
}
