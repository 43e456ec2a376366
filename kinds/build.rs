//! The kinds' migrations are embedded with `sqlx::migrate!`: a change under
//! migrations/ rebuilds the crate.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
