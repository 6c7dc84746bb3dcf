// `sqlx::migrate!` embeds the migration files when this crate compiles: a
// new or changed file must compile it again.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
