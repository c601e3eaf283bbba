//! Every seed (`fuzz/corpus/<target>/`) and every past finding (`fuzz/regressions/<target>/`,
//! kept once fixed) through its target's body, without AFL: a finding can never come back.

fn replay(target: &str, body: fn(&[u8])) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else { continue };
        for e in entries {
            let path = e.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let ok = std::panic::catch_unwind(|| body(&data));
            assert!(ok.is_ok(), "{target}: {} fails", path.display());
            n += 1;
        }
    }
    assert!(n > 0, "{target}: no seeds");
}

#[test]
fn records() {
    replay("records", exportcore_fuzz::records);
}

#[test]
fn canonical() {
    replay("canonical", exportcore_fuzz::canonical);
}

#[test]
fn manifests() {
    replay("manifests", exportcore_fuzz::manifests);
}

#[test]
fn archive() {
    replay("archive", exportcore_fuzz::archive);
}
