//! What the README, the guides in `docs/` and the modules' rustdoc show a newcomer, checked against
//! what a project with the default features gets: examples that need another feature name it.

use std::path::{Path, PathBuf};

/// Items of the Rust examples that need a feature off by default, and that feature.
const NEEDS_FEATURE: [(&str, &str); 5] = [
    // A handler argument: the extractor is `FromRequestParts` only with the `axum` feature.
    (": VerifiedWebhook", "axum"),
    // A handler's answer: `Problem` is `IntoResponse` only with the `axum` feature.
    ("Result<_, Problem>", "axum"),
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

/// A part of a document: its heading, its whole text (examples included) and its Rust examples.
struct Section {
    heading: String,
    text: String,
    rust: Vec<String>,
}

/// `text` cut at its headings (outside code blocks). The first part is the introduction: up to
/// the first heading of level `intro_level + 1` or above (a Markdown page's title is level 1,
/// so its introduction runs to the first `##`; a module's rustdoc has no title).
fn sections(text: &str, intro_level: usize, rust_by_default: bool) -> Vec<Section> {
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
                None => {
                    let lang = fence.split(',').next().unwrap_or_default().trim();
                    let rust = match lang {
                        "" => rust_by_default,
                        "rust" | "no_run" | "ignore" | "should_panic" | "compile_fail" => true,
                        _ => false,
                    };
                    code = Some((rust, String::new()));
                }
            }
        } else if let Some((_, block)) = code.as_mut() {
            block.push_str(line);
            block.push('\n');
        } else {
            let level = line.bytes().take_while(|&b| b == b'#').count();
            if level > intro_level && line[level..].starts_with(' ') {
                sections.push(Section {
                    heading: line.to_owned(),
                    text: String::new(),
                    rust: Vec::new(),
                });
            }
        }
        let section = sections.last_mut().unwrap();
        section.text.push_str(line);
        section.text.push('\n');
    }
    sections
}

/// A module's own rustdoc (its `//!` lines), as Markdown.
fn module_docs(source: &str) -> String {
    source
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("//!"))
        .map(|line| line.strip_prefix(' ').unwrap_or(line))
        .collect::<Vec<_>>()
        .join("\n")
}

fn files(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, ext, out);
        } else if path.extension().is_some_and(|e| e == ext) {
            out.push(path);
        }
    }
}

/// The README's example (and every guide's, and the modules') compiles as a doctest, where the
/// test build turns every feature on; a newcomer who pastes it into a project with the default
/// features gets a compile error instead (`VerifiedWebhook` as an axum handler argument is "not
/// a `Handler`" without the `axum` feature). An example that needs a feature off by default
/// must say so: in the document's introduction or in the example's own section.
#[test]
fn examples_that_need_a_non_default_feature_name_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut documents = Vec::new();
    let mut pages = vec![root.join("README.md")];
    files(&root.join("docs"), "md", &mut pages);
    for path in pages {
        let text = std::fs::read_to_string(&path).unwrap();
        documents.push((path, sections(&text, 1, false)));
    }
    // A module behind a feature (`#[cfg(feature = "tunnel")] pub mod tunnel;`) is shown on
    // docs.rs as available on that feature only: its pages name it.
    let lib = std::fs::read_to_string(root.join("src/lib.rs")).unwrap();
    let gated = |module: &str| -> Option<String> {
        let at = lib.find(&format!("pub mod {module};"))?;
        let attrs = lib[..at].lines().rev().take_while(|l| l.starts_with("#["));
        attrs
            .filter_map(|l| l.strip_prefix("#[cfg(feature = \""))
            .find_map(|l| l.split('"').next().map(str::to_owned))
    };
    let mut sources = Vec::new();
    files(&root.join("src"), "rs", &mut sources);
    for path in sources {
        let mut text = module_docs(&std::fs::read_to_string(&path).unwrap());
        let module = path.strip_prefix(root.join("src")).unwrap().iter().next();
        let module = module.and_then(|m| m.to_str()).unwrap_or_default();
        if let Some(feature) = gated(module.trim_end_matches(".rs")) {
            text.insert_str(
                0,
                &format!("(Available on crate feature `{feature}` only.)\n"),
            );
        }
        documents.push((path, sections(&text, 0, true)));
    }

    let (mut missing, mut checked) = (Vec::new(), 0);
    for (path, sections) in &documents {
        let name = path.strip_prefix(root).unwrap().display();
        let intro = sections.first().map_or("", |s| s.text.as_str());
        for section in sections {
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
    // README and signature.md (axum), signature.md (redis), tunnel.md, circuit-breaker.md
    // (reqwest), the signature and tunnel modules.
    assert!(
        checked >= 8,
        "only {checked} examples found: the scan is broken"
    );
    assert!(
        missing.is_empty(),
        "examples that do not name their feature: {missing:#?}"
    );
}
