//! Documentation review, thirteenth round: what the README and the guides in `docs/` show a
//! newcomer, checked against what a project with the default features gets.

use std::path::Path;

/// Items of the Rust examples that need a feature off by default, and that feature.
const NEEDS_FEATURE: [(&str, &str); 4] = [
    // A handler argument: the extractor is `FromRequestParts` only with the `axum` feature.
    (": VerifiedWebhook", "axum"),
    ("RedisReplayStore", "redis"),
    ("tower_webhook::tunnel", "tunnel"),
    (".service(reqwest::Client", "reqwest"),
];

/// Whether `text` names `feature` as a Cargo feature: "feature `x`", "`x` feature" or
/// `features = [.., "x", ..]`.
fn names_feature(text: &str, feature: &str) -> bool {
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    text.contains(&format!("feature `{feature}`"))
        || text.contains(&format!("`{feature}` feature"))
        || text.split("features = [").skip(1).any(|list| {
            list.split(']')
                .next()
                .is_some_and(|list| list.contains(&format!("\"{feature}\"")))
        })
}

/// A part of a Markdown document: its heading, its whole text (examples included) and its Rust
/// examples.
struct Section {
    heading: String,
    text: String,
    rust: Vec<String>,
}

/// `text` cut at its headings (`#`, `##`, ... outside code blocks); the first part is the
/// introduction, up to the first `##` heading.
fn sections(text: &str) -> Vec<Section> {
    let mut sections = vec![Section {
        heading: String::from("introduction"),
        text: String::new(),
        rust: Vec::new(),
    }];
    let mut code: Option<(bool, String)> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if let Some(fence) = trimmed.strip_prefix("```") {
            match code.take() {
                Some((true, block)) => sections.last_mut().unwrap().rust.push(block),
                Some((false, _)) => {}
                None => code = Some((fence.starts_with("rust"), String::new())),
            }
        } else if let Some((_, block)) = code.as_mut() {
            block.push_str(line);
            block.push('\n');
        } else if line.starts_with("## ") || line.starts_with("### ") {
            sections.push(Section {
                heading: line.to_owned(),
                text: String::new(),
                rust: Vec::new(),
            });
        }
        let section = sections.last_mut().unwrap();
        section.text.push_str(line);
        section.text.push('\n');
    }
    sections
}

/// The README's example (and every guide's) compiles as a doctest, where the test build turns
/// every feature on; a newcomer who pastes it into a project with the default features gets a
/// compile error instead (`VerifiedWebhook` as an axum handler argument is "not a `Handler`"
/// without the `axum` feature). An example that needs a feature off by default must say so:
/// in the document's introduction (before its first `##` section) or in the example's own
/// section.
#[test]
fn examples_that_need_a_non_default_feature_name_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut documents = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|ext| ext == "md") {
            documents.push(path);
        }
    }
    let (mut missing, mut checked) = (Vec::new(), 0);
    for path in documents {
        let text = std::fs::read_to_string(&path).unwrap();
        let name = path.strip_prefix(root).unwrap().display().to_string();
        let sections = sections(&text);
        let intro = sections.first().map_or("", |s| s.text.as_str());
        for section in &sections {
            for block in &section.rust {
                for (marker, feature) in NEEDS_FEATURE {
                    if !block.contains(marker) {
                        continue;
                    }
                    checked += 1;
                    if !names_feature(intro, feature) && !names_feature(&section.text, feature) {
                        missing.push(format!(
                            "{name} ({}): `{marker}` needs `{feature}`",
                            section.heading
                        ));
                    }
                }
            }
        }
    }
    // README (axum), signature.md (axum, redis), tunnel.md, circuit-breaker.md (reqwest).
    assert!(
        checked >= 5,
        "only {checked} examples found: the scan is broken"
    );
    assert!(
        missing.is_empty(),
        "examples that do not name their feature: {missing:#?}"
    );
}
