//! The agent-facing contract in `tools/` matches the code (the architecture rules are
//! `layering.rs`).

use std::path::Path;

use crate::common::*;

#[test]
fn tools_folder_matches_the_code() {
    let env = Env::new();
    let out_dir = env.path("tools");
    let out = env.cli(&["tools", "export", out_dir.to_str().expect("utf8")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools");
    let names = |dir: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        names(&committed),
        names(&out_dir),
        "tools/ is out of date: run `cargo run -- tools export tools/`"
    );
    for name in names(&out_dir) {
        let want = std::fs::read_to_string(out_dir.join(&name)).expect("exported");
        let have = std::fs::read_to_string(committed.join(&name)).expect("committed");
        assert!(
            want == have,
            "tools/{name} is out of date: run `cargo run -- tools export tools/`"
        );
        let v: serde_json::Value = serde_json::from_str(&have).expect("json");
        let a = &v["annotations"];
        for hint in [
            "readOnlyHint",
            "destructiveHint",
            "idempotentHint",
            "openWorldHint",
        ] {
            assert!(a[hint].is_boolean(), "{name}: {hint} not set explicitly");
        }
        assert!(
            v["outputSchema"].is_object() && v["title"].is_string(),
            "{name}"
        );
        assert!(
            !v["requiredScopes"].as_array().expect("scopes").is_empty(),
            "{name}"
        );
    }
}
