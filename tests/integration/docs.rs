//! ARCHITECTURE.md's code map matches the tree: every source file is named in it (a file of a
//! folder by its module name, in backticks, with the folder's own heading present), and every
//! `src/...` path it names exists.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn architecture_code_map_names_every_source_file_and_only_existing_ones() {
    let doc = std::fs::read_to_string(repo().join("ARCHITECTURE.md")).unwrap();
    let mut files = vec![];
    rust_files(&repo().join("src"), &mut files);
    assert!(files.len() > 20, "the source tree was not found: {files:?}");
    let mut missing = vec![];
    for f in &files {
        let rel = f
            .strip_prefix(repo())
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let parts: Vec<&str> = rel.split('/').collect();
        let named = doc.contains(&format!("`{rel}`"))
            || match parts.as_slice() {
                ["src", dir, file] => {
                    let stem = file.trim_end_matches(".rs");
                    doc.contains(&format!("`src/{dir}/`"))
                        && (*file == "mod.rs"
                            || doc.contains(&format!("`{stem}`"))
                            || doc.contains(&format!("`{file}`"))
                            || doc.contains(&format!("`{dir}/{file}`")))
                }
                _ => false,
            };
        if !named {
            missing.push(rel);
        }
    }
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md's code map does not name these source files: {missing:?}"
    );
    // Every src/ path the document names exists.
    let mut stale = BTreeSet::new();
    for token in doc.split('`').skip(1).step_by(2) {
        if let Some(p) = token.strip_prefix("src/")
            && !p.contains(' ')
            && !repo().join("src").join(p).exists()
        {
            stale.insert(token.to_owned());
        }
    }
    assert!(
        stale.is_empty(),
        "ARCHITECTURE.md names paths that do not exist: {stale:?}"
    );
}
