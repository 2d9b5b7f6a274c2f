// sqlx::migrate! embeds the migrations at compile time; this makes cargo rebuild when they change.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
