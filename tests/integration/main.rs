//! Integration tests against real Redis and Postgres servers that the harness
//! starts for this test binary. One binary, one module per area.

mod cli;
mod crash;
mod enqueue;
mod failures;
mod harness;
mod helpers;
mod kind_command;
mod kind_content_generation;
mod kind_data_extraction;
mod kind_http;
mod kind_message;
mod observability;
mod protocol;
