//! Snapshot tests: what a test produced is compared with a file kept beside the tests
//! (`tests/snapshots/NAME`), so a change to a document, an answer or a ruleset shows up as
//! a diff in review instead of passing unseen. A missing or different snapshot fails the
//! test and leaves what was produced in `NAME.new` beside it; after reading it, run the
//! test again with `UPDATE_SNAPSHOTS=1` to accept it (and commit the file). Not a
//! `PLANTGATE_` variable: those are configuration, and `Config::load` refuses unknown ones.

use std::path::Path;

/// Compares `actual` with the snapshot `name` under `dir` (a crate's `tests/snapshots`).
pub fn assert_snapshot(dir: &Path, name: &str, actual: &str) {
    let path = dir.join(name);
    let fresh = dir.join(format!("{name}.new"));
    std::fs::create_dir_all(dir).expect("snapshot directory");
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some_and(|v| v == "1") {
        std::fs::write(&path, actual).expect("write snapshot");
        let _ = std::fs::remove_file(&fresh);
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    if expected == actual {
        let _ = std::fs::remove_file(&fresh);
        return;
    }
    std::fs::write(&fresh, actual).expect("write the new snapshot");
    let first_difference = expected
        .lines()
        .zip(actual.lines())
        .position(|(want, got)| want != got)
        .unwrap_or_else(|| expected.lines().count().min(actual.lines().count()));
    panic!(
        "snapshot {} does not match (first difference at line {}; {} lines kept, {} produced).\n\
         What was produced is in {}: compare the two, and if the change is meant, run the test \
         again with UPDATE_SNAPSHOTS=1 and commit the snapshot.",
        path.display(),
        first_difference + 1,
        expected.lines().count(),
        actual.lines().count(),
        fresh.display()
    );
}
