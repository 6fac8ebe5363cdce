//! Prints the configuration reference, generated from the command line's definitions:
//! `cargo run --release --example config_reference > docs/configuration.md`.

fn main() {
    print!("{}", datapack_worker::reference::configuration().markdown);
}
