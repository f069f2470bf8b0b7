//! A disk cache of compiled plugins.
//!
//! Compiling a component is the slow part of loading one (milliseconds for
//! a small Rust policy, seconds for a Python or JavaScript one that carries
//! its interpreter); loading the machine code wasmtime produced is fast.
//! Entries are keyed by a SHA-256 of the component's bytes and of the
//! engine's compatibility hash (wasmtime version, target, settings), so a
//! changed plugin or an upgraded host never loads stale code.
//!
//! Loading machine code is trusted: anyone who can write the cache can run
//! code in the host. The cache directory is therefore created private to
//! its owner (0700) and entries are written 0600, atomically.

use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::component::Component;

/// Where compiled plugins are kept.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: PathBuf,
}

impl CompileCache {
    /// A cache in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        CompileCache { dir: dir.into() }
    }

    /// The default location: `$XDG_CACHE_HOME/wsched` or `~/.cache/wsched`.
    pub fn default_dir() -> Option<PathBuf> {
        std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|d| d.join("wsched"))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn entry(&self, engine: &wasmtime::Engine, bytes: &[u8]) -> PathBuf {
        let mut compat = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut compat);
        let mut sha = Sha256::new();
        sha.update(compat.finish().to_le_bytes());
        sha.update(bytes);
        let hex: String = sha.finalize().iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join(format!("{hex}.cwasm"))
    }

    /// The compiled component for `bytes`, if cached and loadable.
    pub(crate) fn get(&self, engine: &wasmtime::Engine, bytes: &[u8]) -> Option<Component> {
        let path = self.entry(engine, bytes);
        if !path.exists() {
            return None;
        }
        // SAFETY: entries are only written by `put` below, into a directory
        // private to this user, under a name derived from the component and
        // the engine's compatibility hash; wasmtime also checks the header.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable compile cache entry");
                None
            }
        }
    }

    /// Remember `component`, compiled from `bytes`. Failures only log: the
    /// cache is an optimisation.
    pub(crate) fn put(&self, engine: &wasmtime::Engine, bytes: &[u8], component: &Component) {
        let path = self.entry(engine, bytes);
        if let Err(e) = self.write(&path, component) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot write the compile cache");
        }
    }

    fn write(&self, path: &Path, component: &Component) -> anyhow::Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        let code = component.serialize().map_err(|e| anyhow::anyhow!("{e}"))?;
        // Unique per writer: two threads (or processes) may compile the same
        // component at once, and each must rename only a file it finished.
        static WRITERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let writer = WRITERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = path.with_extension(format!("tmp{}-{writer}", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(&code)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }
}
