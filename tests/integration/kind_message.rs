//! The `message-processing` kind against a real Postgres: what a messaging front
//! end would see in `conversations` and `messages` after webhooks arrive, arrive
//! twice, or arrive broken.

use serde_json::{Value, json};
use sqlx::PgPool;

use jobrunner::ledger::Status;

use crate::helpers::{TestApp, spawn_app};

const KIND: &str = "message-processing";

fn webhook(value: Value) -> Value {
    json!({"object": "whatsapp_business_account", "entry": [{"id": "102290129340398", "changes": [
        {"field": "messages", "value": value}
    ]}]})
}

fn text(id: &str, from: &str, at: i64, body: &str) -> Value {
    json!({"from": from, "id": id, "timestamp": at.to_string(), "type": "text", "text": {"body": body}})
}

fn receipt(id: &str, status: &str) -> Value {
    json!({"id": id, "status": status, "timestamp": "1700000100", "recipient_id": "15550001"})
}

/// Runs one webhook job to its end and returns (status, result, last_error).
async fn process(app: &TestApp, tenant: &str, body: Value) -> (Status, Value, Option<String>) {
    let id = app
        .enqueue(KIND, json!({"tenant": tenant, "webhook": body}))
        .await;
    let job = app.wait_final(id, 15).await;
    (
        job.status,
        job.result.unwrap_or(Value::Null),
        job.last_error,
    )
}

/// Every row of both tables, as JSON, in a stable order.
async fn snapshot(db: &PgPool) -> Vec<Value> {
    sqlx::query_scalar(
        "SELECT to_jsonb(c) FROM public.conversations c
         UNION ALL SELECT to_jsonb(m) FROM public.messages m ORDER BY 1",
    )
    .fetch_all(db)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_fills_the_conversation_and_a_resend_changes_nothing() {
    let app = spawn_app().await;
    let daemon = app.start_daemon().await;
    let db = app.ledger.pool();
    let body = webhook(json!({
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550000", "phone_number_id": "1"},
        "contacts": [{"profile": {"name": "Ada"}, "wa_id": "15550001"}],
        "messages": [
            text("wamid.A", "15550001", 1_700_000_000, "hello"),
            text("wamid.B", "15550001", 1_700_000_060, "are you there?"),
            {"from": "15550001", "id": "wamid.C", "timestamp": "1700000030", "type": "image",
             "image": {"id": "media-1", "mime_type": "image/jpeg"}},
        ]
    }));

    let (status, result, _) = process(&app, "acme", body.clone()).await;
    assert_eq!(status, Status::Succeeded);
    assert_eq!(
        result,
        json!({"inserted": 3, "duplicates": 0, "statuses_applied": 0, "rejected": [], "ignored_changes": 0})
    );
    let (name, unread, last): (Option<String>, i32, i64) = sqlx::query_as(
        "SELECT contact_name, unread_count, extract(epoch FROM last_message_at)::bigint
         FROM public.conversations WHERE tenant = 'acme' AND contact_number = '15550001'",
    )
    .fetch_one(db)
    .await
    .unwrap();
    assert_eq!(
        (name.as_deref(), unread, last),
        (Some("Ada"), 3, 1_700_000_060)
    );
    let bodies: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT body FROM public.messages WHERE direction = 'inbound' AND status = 'received'
         ORDER BY sent_at",
    )
    .fetch_all(db)
    .await
    .unwrap();
    assert_eq!(
        bodies,
        vec![
            Some("hello".into()),
            Some("[image]".into()),
            Some("are you there?".into())
        ]
    );

    let before = snapshot(db).await;
    let (status, result, _) = process(&app, "acme", body).await;
    assert_eq!(status, Status::Succeeded);
    assert_eq!(result["inserted"], 0);
    assert_eq!(result["duplicates"], 3);
    assert_eq!(
        snapshot(db).await,
        before,
        "a resent webhook must not change a single row (not even updated_at)"
    );

    // A later message from the same contact under another tenant is another conversation.
    let later = webhook(json!({"messages": [text("wamid.D", "15550001", 1_700_000_090, "hi")]}));
    let (_, result, _) = process(&app, "other-tenant", later).await;
    assert_eq!(result["inserted"], 1);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM public.conversations")
        .fetch_one(db)
        .await
        .unwrap();
    assert_eq!(count, 2);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_only_move_outbound_messages_forward() {
    let app = spawn_app().await;
    let daemon = app.start_daemon().await;
    let db = app.ledger.pool();
    // The sending application records its outbound message and the inbound one
    // it answered; the provider later reports on the outbound one.
    sqlx::query(
        "WITH c AS (INSERT INTO public.conversations (tenant, contact_number, last_message_at)
                    VALUES ('acme', '15550001', to_timestamp(1700000000)) RETURNING id)
         INSERT INTO public.messages (conversation_id, provider_message_id, direction, sender_type,
                                      body, sent_at, status, is_read)
         SELECT id, 'wamid.OUT', 'outbound', 'agent', 'Your order shipped', to_timestamp(1700000000), 'sent', false FROM c
         UNION ALL
         SELECT id, 'wamid.IN', 'inbound', 'contact', 'Where is my order?', to_timestamp(1699999000), 'received', false FROM c",
    )
    .execute(db)
    .await
    .unwrap();
    let state = || async {
        sqlx::query_as::<_, (String, bool)>(
            "SELECT status, is_read FROM public.messages WHERE provider_message_id = 'wamid.OUT'",
        )
        .fetch_one(db)
        .await
        .unwrap()
    };

    let (_, result, _) = process(
        &app,
        "acme",
        webhook(json!({"statuses": [receipt("wamid.OUT", "delivered")]})),
    )
    .await;
    assert_eq!(result["statuses_applied"], 1);
    assert_eq!(state().await, ("delivered".into(), false));

    // A late `sent` receipt must not move it back.
    let (_, result, _) = process(
        &app,
        "acme",
        webhook(json!({"statuses": [receipt("wamid.OUT", "sent")]})),
    )
    .await;
    assert_eq!(result["statuses_applied"], 0);
    assert_eq!(state().await, ("delivered".into(), false));

    // `read` applies; receipts for an inbound or unknown message change nothing.
    let read = webhook(json!({"statuses": [
        receipt("wamid.OUT", "read"), receipt("wamid.IN", "read"), receipt("wamid.UNKNOWN", "delivered")
    ]}));
    let (_, result, _) = process(&app, "acme", read.clone()).await;
    assert_eq!(result["statuses_applied"], 1);
    assert_eq!(state().await, ("read".into(), true));
    let inbound: String = sqlx::query_scalar(
        "SELECT status FROM public.messages WHERE provider_message_id = 'wamid.IN'",
    )
    .fetch_one(db)
    .await
    .unwrap();
    assert_eq!(inbound, "received");

    let before = snapshot(db).await;
    let (_, result, _) = process(&app, "acme", read).await;
    assert_eq!(result["statuses_applied"], 0);
    assert_eq!(snapshot(db).await, before);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_items_are_reported_and_a_webhook_with_nothing_usable_is_dead() {
    let app = spawn_app().await;
    let daemon = app.start_daemon().await;

    let mut no_id = text("wamid.X", "15550001", 1_700_000_000, "lost");
    no_id.as_object_mut().unwrap().remove("id");
    let mixed = json!({"object": "whatsapp_business_account", "entry": [{"changes": [
        {"field": "messages", "value": {"messages": [text("wamid.1", "15550001", 1_700_000_000, "a")]}},
        {"field": "messages", "value": {"messages": [
            text("wamid.2", "15550001", 1_700_000_001, "b"),
            text("wamid.3", "15550001", 1_700_000_002, "c"),
            no_id.clone(),
        ]}},
    ]}]});
    let (status, result, _) = process(&app, "acme", mixed).await;
    assert_eq!(status, Status::Succeeded);
    assert_eq!(result["inserted"], 3);
    assert_eq!(
        result["rejected"],
        json!([{"path": "webhook.entry[0].changes[1].value.messages[2]", "error": "missing field `id`"}])
    );

    let (status, _, error) = process(&app, "acme", webhook(json!({"messages": [no_id]}))).await;
    assert_eq!(status, Status::Dead);
    assert_eq!(
        error.as_deref(),
        Some("webhook.entry[0].changes[0].value.messages[0]: missing field `id`")
    );

    let (status, _, error) = process(&app, "acme", json!({"entry": "yes"})).await;
    assert_eq!(status, Status::Dead);
    assert_eq!(
        error.as_deref(),
        Some("webhook: field `entry`: expected an array, found a string")
    );

    let id = app
        .enqueue(KIND, json!({"webhook": webhook(json!({}))}))
        .await;
    let job = app.wait_final(id, 10).await;
    assert_eq!(
        (job.status.as_str(), job.last_error.as_deref()),
        ("dead", Some("bad payload: missing field `tenant`"))
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_dated_out_of_range_is_reported_and_its_neighbour_kept() {
    let app = spawn_app().await;
    let daemon = app.start_daemon().await;
    let body = webhook(json!({
        "messages": [
            text("wamid.far", "15550001", -1_000_000_000_000, "from the stone age"),
            text("wamid.future", "15550001", 1_000_000_000_000, "from the far future"),
            text("wamid.good", "15550001", 1_700_000_000, "hello"),
        ]
    }));
    let (status, result, _) = process(&app, "acme", body).await;
    assert_eq!(status, Status::Succeeded, "{result}");
    assert_eq!(result["inserted"], 1, "{result}");
    let rejected = result["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 2, "{result}");
    assert!(
        rejected
            .iter()
            .all(|r| r["error"].as_str().unwrap().contains("years 1970-9999")),
        "{result}"
    );
    let kept: Vec<String> = sqlx::query_scalar("SELECT provider_message_id FROM public.messages")
        .fetch_all(app.ledger.pool())
        .await
        .unwrap();
    assert_eq!(kept, ["wamid.good"]);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_too_long_for_any_index_is_bad_input_never_retried() {
    let app = spawn_app().await;
    let daemon = app.start_daemon().await;
    let long = format!("wamid.{}", "x".repeat(6000));
    // Next to a good message: the long one is rejected, the good one kept.
    let body = webhook(json!({"messages": [
        text(&long, "15550001", 1_700_000_000, "long id"),
        text("wamid.ok", "15550001", 1_700_000_001, "fine"),
    ]}));
    let (status, result, _) = process(&app, "acme", body).await;
    assert_eq!(status, Status::Succeeded, "{result}");
    assert_eq!(result["inserted"], 1, "{result}");
    // Alone: nothing usable, so dead on the first attempt.
    let id = app
        .enqueue(
            KIND,
            json!({"tenant": "acme", "webhook": webhook(json!({"messages": [
                text(&long, "15550001", 1_700_000_000, "long id"),
            ]}))}),
        )
        .await;
    let job = app.wait_final(id, 15).await;
    assert_eq!((job.status.as_str(), job.attempts), ("dead", 1), "{job:?}");
    assert!(
        job.last_error
            .unwrap()
            .contains("more than the 512 an id may have"),
        "the error says what was wrong"
    );
    // A tenant that long cannot be stored either: dead at once, not retried.
    let id = app
        .enqueue(
            KIND,
            json!({"tenant": "t".repeat(6000), "webhook": webhook(json!({"messages": [
                text("wamid.t", "15550001", 1_700_000_000, "hi"),
            ]}))}),
        )
        .await;
    let job = app.wait_final(id, 15).await;
    assert_eq!((job.status.as_str(), job.attempts), ("dead", 1), "{job:?}");
    daemon.stop().await;
}

/// The SQL block that follows `marker` in docs/kinds/message-processing.md, so the
/// query the docs recommend is the one tested.
fn documented_sql(marker: &str) -> String {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/kinds/message-processing.md"
    ))
    .unwrap();
    let after = &doc[doc.find(marker).expect("marker in the doc")..];
    let start = after.find("```sql\n").expect("sql block") + "```sql\n".len();
    let end = after[start..].find("```").expect("end of the block");
    after[start..start + end].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_conversation_list_is_one_indexed_query() {
    let app = spawn_app().await;
    let db = app.ledger.pool();
    // 20 tenants × 300 conversations × 3 messages: enough rows that a sequential
    // scan would lose to the indexes.
    sqlx::query(
        "INSERT INTO public.conversations (tenant, contact_number, contact_name, last_message_at, unread_count)
         SELECT 'tenant-' || t, '1555' || n, 'Contact ' || n,
                to_timestamp(1700000000 + n * 60 + 2), n % 4
         FROM generate_series(1, 20) t, generate_series(1, 300) n",
    )
    .execute(db)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO public.messages (conversation_id, provider_message_id, direction, sender_type,
                                      body, sent_at, status, is_read)
         SELECT c.id, c.id || '-' || k, 'inbound', 'contact', 'message ' || k,
                c.last_message_at - (2 - k) * interval '1 second', 'received', false
         FROM public.conversations c, generate_series(0, 2) k",
    )
    .execute(db)
    .await
    .unwrap();
    sqlx::query("ANALYZE public.conversations, public.messages")
        .execute(db)
        .await
        .unwrap();

    let sql = documented_sql("<!-- conversation-list -->");
    let rows: Vec<(String, Option<String>, i32, Option<String>)> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT contact_number, contact_name, unread_count, last_body FROM ({}) q",
            sql.trim().trim_end_matches(';')
        )))
        .bind("tenant-7")
        .bind(3_i64)
        .fetch_all(db)
        .await
        .unwrap();
    assert_eq!(
        rows,
        vec![
            (
                "1555300".into(),
                Some("Contact 300".into()),
                0,
                Some("message 2".into())
            ),
            (
                "1555299".into(),
                Some("Contact 299".into()),
                3,
                Some("message 2".into())
            ),
            (
                "1555298".into(),
                Some("Contact 298".into()),
                2,
                Some("message 2".into())
            ),
        ],
        "newest conversation first, each with its last message"
    );

    let plan: Value =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN (FORMAT JSON) {sql}")))
            .bind("tenant-7")
            .bind(50_i64)
            .fetch_one(db)
            .await
            .unwrap();
    let plan = plan.to_string();
    assert!(
        plan.contains("conversations_tenant_last_message_idx"),
        "the list must walk the (tenant, last_message_at) index: {plan}"
    );
    assert!(
        plan.contains("messages_conversation_sent_at_idx"),
        "each last message must come from the (conversation_id, sent_at) index: {plan}"
    );
    assert!(!plan.contains("Seq Scan"), "{plan}");
}
