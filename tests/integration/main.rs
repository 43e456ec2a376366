//! Integration tests against real Redis and Postgres servers that the harness
//! starts for this test binary. One binary, one module per area.

mod admin;
mod cli;
mod command_orphans;
mod crash;
mod cron;
mod enqueue;
mod enqueue_many;
mod failures;
mod flow;
mod harness;
mod helpers;
mod id_reuse;
mod invariants;
mod kind_command;
mod kind_content_generation;
mod kind_data_extraction;
mod kind_http;
mod kind_message;
mod ledger_payload;
mod logs;
mod observability;
mod plans;
mod poison;
mod poison_props;
mod poison_redis;
mod privilege;
mod protocol;
mod redaction;
mod reload;
mod run_at;
mod systemd;
