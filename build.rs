//! Embeds the shipped rule files so the binary works from any directory.

use std::fmt::Write as _;
use std::{env, fs, path::Path};

fn main() {
    println!("cargo:rerun-if-changed=rules");
    let mut names: Vec<String> = fs::read_dir("rules")
        .expect("rules/ is readable")
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".toml"))
        .collect();
    names.sort();

    let root = env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let mut code = String::from("pub(crate) const SHIPPED_RULES: &[(&str, &str)] = &[\n");
    for name in &names {
        let path = Path::new(&root).join("rules").join(name);
        writeln!(code, "    ({name:?}, include_str!({:?})),", path.display()).unwrap();
    }
    code.push_str("];\n");

    let out = Path::new(&env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("shipped_rules.rs");
    fs::write(out, code).expect("OUT_DIR is writable");
}
