//! A power cut for processes: `tests/power_cut/power_cut.c`, an
//! `LD_PRELOAD` layer, copies each file of a process's data directory aside
//! whenever the process fsyncs it. After SIGKILL, the copy is the directory
//! as a power cut that drops every write not yet synced leaves it (see the C
//! file for the model); [`PowerCut::cut`] puts it in the directory's place.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The layer, compiled for this test run.
#[derive(Debug)]
pub struct PowerCut {
    _dir: tempfile::TempDir,
    library: PathBuf,
}

impl PowerCut {
    /// Compiles the layer with the system's C compiler (`cc`, which Rust
    /// links with). Panics when it does not compile.
    pub fn build() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let library = dir.path().join("power_cut.so");
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("power_cut/power_cut.c");
        let out = Command::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-o"])
            .arg(&library)
            .arg(&source)
            .arg("-ldl")
            .output()
            .expect("run cc to build the power-cut layer");
        assert!(
            out.status.success(),
            "cc {}: {}",
            source.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Self { _dir: dir, library }
    }

    /// The environment that makes a process keep what it syncs under `dir`
    /// in [`durable(dir)`](durable). Creates `dir`, whose canonical path the
    /// layer compares with what `/proc/self/fd` shows.
    pub fn env(&self, dir: &Path) -> Vec<(String, String)> {
        std::fs::create_dir_all(dir).expect("mkdir");
        let dir = dir.canonicalize().expect("canonical data dir");
        vec![
            ("LD_PRELOAD".into(), self.library.display().to_string()),
            ("POWER_CUT_DIR".into(), dir.display().to_string()),
            (
                "POWER_CUT_DURABLE".into(),
                durable(&dir).display().to_string(),
            ),
        ]
    }

    /// After the process was killed: replaces `dir` by what was synced of
    /// it, keeping the lost state in `<dir>.before-cut` to look at.
    pub fn cut(dir: &Path) {
        let dir = dir.canonicalize().expect("canonical data dir");
        let durable = durable(&dir);
        let before = dir.with_extension("before-cut");
        std::fs::rename(&dir, &before).expect("move the data dir aside");
        if durable.exists() {
            std::fs::rename(&durable, &dir).expect("put the synced copy in place");
        } else {
            std::fs::create_dir_all(&dir).expect("nothing was synced: an empty dir");
        }
    }
}

/// Where the layer keeps what was synced of `dir`.
pub fn durable(dir: &Path) -> PathBuf {
    dir.with_extension("durable")
}
