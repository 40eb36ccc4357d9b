//! Rebuilds the crate when a migration changes: `sqlx::migrate!` embeds
//! `migrations/` at compile time, and cargo does not otherwise know that a
//! new or edited `.sql` file is an input.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
