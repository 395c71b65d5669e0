//! Rebuilds the daemon when a migration is added or changed: `embed_migrations!`
//! (src/store/mod.rs) reads `migrations/` at compile time, and cargo does not know it.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
