//! What the README and the crate's rustdoc tell a newcomer about the integrations' versions,
//! checked against the versions `Cargo.toml` builds them with.

use std::path::Path;

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

/// The version requirement of `name` in the `[section]` of `Cargo.toml`: `name = "x"` or
/// `name = { .., version = "x", .. }` (a renamed one by its key, `reqwest-0-12 = { package = .. }`).
fn version_of(manifest: &str, section: &str, name: &str) -> String {
    let header = format!("[{section}]");
    let body = manifest.split(&header).nth(1).expect("section present");
    let body = body.split("\n[").next().unwrap();
    let line = body
        .lines()
        .find(|l| l.starts_with(&format!("{name} =")))
        .unwrap_or_else(|| panic!("{name} not in [{section}]"));
    let value = line.split_once('=').unwrap().1.trim();
    let quoted = match value.split_once("version = ") {
        Some((_, rest)) => rest,
        None => value,
    };
    quoted.split('"').nth(1).unwrap().to_owned()
}

/// The row of the feature table that names `feature` in its first cell.
fn feature_row<'a>(table: &'a str, feature: &str) -> &'a str {
    table
        .lines()
        .map(|l| l.trim_start_matches("//!").trim())
        .find(|l| l.starts_with(&format!("| `{feature}` |")))
        .unwrap_or_else(|| panic!("no row for `{feature}`"))
}

/// An application on tonic 0.13 or redis 0.32 gets types the features do not support (a
/// `tonic::Status` of another tonic is not recognised, `RedisReplayStore::new` does not take
/// another redis's `ConnectionManager`): every integration's row in the feature tables of the
/// README and of the crate's rustdoc names the version it is built for, and that version is
/// the one `Cargo.toml` asks for.
#[test]
fn feature_tables_name_the_integrations_versions() {
    let manifest = read("Cargo.toml");
    // `axum` builds on axum-core; the version a user has is axum's, which the tests use.
    let integrations = [
        (
            "axum",
            "axum",
            version_of(&manifest, "dev-dependencies", "axum"),
        ),
        (
            "tonic",
            "tonic",
            version_of(&manifest, "dependencies", "tonic"),
        ),
        (
            "reqwest",
            "reqwest",
            version_of(&manifest, "dependencies", "reqwest"),
        ),
        (
            "reqwest-0-12",
            "reqwest",
            version_of(&manifest, "dependencies", "reqwest-0-12"),
        ),
        (
            "redis",
            "redis",
            version_of(&manifest, "dependencies", "redis"),
        ),
    ];
    assert_eq!(
        version_of(&manifest, "dependencies", "axum-core"),
        "0.5",
        "axum-core 0.5 is axum 0.8's: update the axum version below and in the docs"
    );
    for (doc, table) in [
        ("README.md", read("README.md")),
        ("src/lib.rs", read("src/lib.rs")),
    ] {
        for (feature, krate, version) in &integrations {
            let row = feature_row(&table, feature);
            let named = format!("{krate} {version}");
            // `redis 1`, not `redis 1.2` nor `redis 10`.
            let says = row.match_indices(&named).any(|(at, _)| {
                !row[at + named.len()..].starts_with(|c: char| c.is_ascii_digit() || c == '.')
            });
            assert!(
                says,
                "{doc}: the `{feature}` row does not say `{named}`: {row}"
            );
        }
    }
}

/// The README's testing section names the `rust-version` CI builds the library with.
#[test]
fn the_readme_names_the_declared_rust_version() {
    let manifest = read("Cargo.toml");
    let msrv = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .unwrap()
        .trim_matches('"');
    let readme = read("README.md")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        readme.contains(&format!("declared `rust-version` ({msrv})")),
        "README does not name rust-version {msrv}"
    );
}
