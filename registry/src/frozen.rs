//! A point-in-time view of the catalog's store while it goes on changing:
//! what a snapshot for a follower is built from, on a thread of its own,
//! while the consensus loop keeps applying (the store has no point-in-time
//! read of its own).
//!
//! The store is wrapped in [`Capturing`]. [`Capturing::freeze`] returns a
//! [`Frozen`] view and, until the view is dropped, every write first copies
//! the value each of its keys held when the view was taken (its *pre-image*;
//! `None` for a key that did not exist), once per key. A read of the view
//! reads the store, then looks for a pre-image: the pre-image wins. That
//! read order is what makes it exact: a pre-image is recorded before the
//! write that replaces it, so a read that saw the new value finds it.
//!
//! The cost while no view is open is one uncontended lock per batch. While
//! one is open, one read per key a batch writes for the first time, and the
//! memory of those old values (a few seconds of writes).

use crate::error::StoreError;
use crate::kv::{Batch, Entries, Kv, KvEngine, prefix_end};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Old values by key, as they were when a view was taken.
type PreImages = Mutex<BTreeMap<Vec<u8>, Option<Vec<u8>>>>;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A store whose state at a moment can be kept readable while it changes
/// (see the module documentation). Clones share the store.
#[derive(Clone, Debug)]
pub struct Capturing(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    base: Kv,
    /// The pre-images of every open view. Held across a write, so a view
    /// opens between two batches, never inside one.
    open: Mutex<Vec<Arc<PreImages>>>,
}

impl Capturing {
    /// `base`, able to [`freeze`](Self::freeze).
    pub fn new(base: Kv) -> Self {
        Self(Arc::new(Inner {
            base,
            open: Mutex::new(Vec::new()),
        }))
    }

    /// A read-only view of the store as it is now, for as long as the view
    /// (a [`Kv`] over a [`Frozen`]) lives.
    pub fn freeze(&self) -> Kv {
        let pre = Arc::new(PreImages::default());
        lock(&self.0.open).push(pre.clone());
        Kv::new(Frozen {
            store: self.0.clone(),
            pre,
        })
    }

    /// How many views are open (for tests).
    #[cfg(test)]
    fn open_views(&self) -> usize {
        lock(&self.0.open).len()
    }
}

impl KvEngine for Capturing {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.0.base.get(key)
    }

    fn range(&self, start: &[u8], end: Option<&[u8]>) -> Entries<'_> {
        self.0.base.range(start, end)
    }

    fn last_key(&self, prefix: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.0.base.last_key(prefix)
    }

    fn write(&self, batch: Batch) -> Result<(), StoreError> {
        let open = lock(&self.0.open);
        for pre in open.iter() {
            let mut pre = lock(pre);
            for key in batch.keys() {
                if !pre.contains_key(key) {
                    let old = self.0.base.get(key)?;
                    pre.insert(key.clone(), old);
                }
            }
        }
        self.0.base.write(batch)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.0.base.flush()
    }
}

/// The store as it was when [`Capturing::freeze`] made this view. Read-only;
/// dropping it stops the copying of pre-images for it.
#[derive(Debug)]
pub struct Frozen {
    store: Arc<Inner>,
    pre: Arc<PreImages>,
}

impl Drop for Frozen {
    fn drop(&mut self) {
        lock(&self.store.open).retain(|pre| !Arc::ptr_eq(pre, &self.pre));
    }
}

impl Frozen {
    /// The pairs of `start..end` as they were: the store's, read first,
    /// then every pre-image in the range over them.
    fn collect_range(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, StoreError> {
        let mut pairs = BTreeMap::new();
        for pair in self.store.base.range(start, end) {
            let (key, value) = pair?;
            pairs.insert(key, value);
        }
        let pre = lock(&self.pre);
        let range = match end {
            Some(end) if end <= start => return Ok(BTreeMap::new()),
            Some(end) => pre.range(start.to_vec()..end.to_vec()),
            None => pre.range(start.to_vec()..),
        };
        for (key, old) in range {
            match old {
                Some(value) => pairs.insert(key.clone(), value.clone()),
                None => pairs.remove(key),
            };
        }
        Ok(pairs)
    }
}

impl KvEngine for Frozen {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        // The store first, then the pre-image (see the module documentation).
        let now = self.store.base.get(key)?;
        match lock(&self.pre).get(key) {
            Some(old) => Ok(old.clone()),
            None => Ok(now),
        }
    }

    fn range(&self, start: &[u8], end: Option<&[u8]>) -> Entries<'_> {
        match self.collect_range(start, end) {
            Ok(pairs) => Box::new(pairs.into_iter().map(Ok)),
            Err(e) => Box::new(std::iter::once(Err(e))),
        }
    }

    fn last_key(&self, prefix: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let pairs = self.collect_range(prefix, prefix_end(prefix).as_deref())?;
        Ok(pairs.into_keys().next_back())
    }

    fn write(&self, _batch: Batch) -> Result<(), StoreError> {
        Err(StoreError::Engine(
            "a frozen view of the store is read-only".into(),
        ))
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem_kv::MemKv;

    fn write(kv: &Kv, writes: &[(&str, Option<&str>)]) {
        kv.write(
            writes
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.map(|v| v.as_bytes().to_vec())))
                .collect(),
        )
        .unwrap();
    }

    fn all(kv: &Kv, prefix: &str) -> Vec<(String, String)> {
        kv.scan_prefix(prefix.as_bytes())
            .map(|pair| {
                let (k, v) = pair.unwrap();
                (String::from_utf8(k).unwrap(), String::from_utf8(v).unwrap())
            })
            .collect()
    }

    fn writes_as_pairs(keys: &[String]) -> Vec<(String, String)> {
        keys.iter().map(|k| (k.clone(), "10".to_owned())).collect()
    }

    #[test]
    fn a_view_keeps_the_state_it_was_taken_at_while_the_store_changes_under_it() {
        let capturing = Capturing::new(Kv::new(MemKv::default()));
        let store = Kv::new(capturing.clone());
        write(
            &store,
            &[("r:a", Some("1")), ("r:b", Some("2")), ("r:c", Some("3"))],
        );
        let view = capturing.freeze();
        let before = all(&store, "r:");
        // Changed, removed, added, and changed twice.
        write(&store, &[("r:a", Some("changed")), ("r:b", None)]);
        write(&store, &[("r:d", Some("new")), ("r:a", Some("again"))]);
        write(&store, &[("r:b", Some("back")), ("s:other", Some("x"))]);
        assert_eq!(all(&view, "r:"), before);
        assert_eq!(view.get(b"r:a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(view.get(b"r:b").unwrap(), Some(b"2".to_vec()));
        assert_eq!(view.get(b"r:d").unwrap(), None);
        assert_eq!(view.get(b"s:other").unwrap(), None);
        assert_eq!(view.last_key(b"r:").unwrap(), Some(b"r:c".to_vec()));
        assert_eq!(view.range(b"r:b", Some(b"r:b")).count(), 0);
        assert!(
            view.write(Batch::new()).is_ok(),
            "an empty batch writes nothing"
        );
        let mut one = Batch::new();
        one.insert(b"r:z".to_vec(), None);
        assert!(view.write(one).is_err(), "a view is read-only");
        // The store itself has every change.
        assert_eq!(
            all(&store, "r:"),
            [
                ("r:a", "again"),
                ("r:b", "back"),
                ("r:c", "3"),
                ("r:d", "new")
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        // Dropped, the view costs nothing more.
        assert_eq!(capturing.open_views(), 1);
        drop(view);
        assert_eq!(capturing.open_views(), 0);
        let later = capturing.freeze();
        write(&store, &[("r:c", None)]);
        assert_eq!(later.get(b"r:c").unwrap(), Some(b"3".to_vec()));
        assert_eq!(later.get(b"r:a").unwrap(), Some(b"again".to_vec()));
    }

    /// A store that runs a check right after each batch lands in it,
    /// before the write returns: a read at the worst moment.
    #[derive(Default)]
    struct Landed {
        store: MemKv,
        check: Mutex<Option<Box<dyn Fn() + Send>>>,
    }

    impl std::fmt::Debug for Landed {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Landed")
        }
    }

    impl KvEngine for Arc<Landed> {
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.store.get(key)
        }
        fn range(&self, start: &[u8], end: Option<&[u8]>) -> Entries<'_> {
            self.store.range(start, end)
        }
        fn last_key(&self, prefix: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.store.last_key(prefix)
        }
        fn write(&self, batch: Batch) -> Result<(), StoreError> {
            self.store.write(batch)?;
            if let Some(check) = &*lock(&self.check) {
                check();
            }
            Ok(())
        }
        fn flush(&self) -> Result<(), StoreError> {
            Ok(())
        }
    }

    #[test]
    fn a_view_read_the_moment_a_batch_lands_already_has_its_old_values() {
        let landed = Arc::new(Landed::default());
        let capturing = Capturing::new(Kv::new(landed.clone()));
        let store = Kv::new(capturing.clone());
        write(&store, &[("r:a", Some("1")), ("r:b", Some("2"))]);
        let view = capturing.freeze();
        let initial = all(&view, "r:");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (reader, log) = (view.clone(), seen.clone());
        *lock(&landed.check) = Some(Box::new(move || {
            lock(&log).push((all(&reader, "r:"), reader.get(b"r:a").unwrap()));
        }));
        write(&store, &[("r:a", Some("changed")), ("r:c", Some("new"))]);
        write(&store, &[("r:b", None)]);
        let seen = lock(&seen).clone();
        assert_eq!(seen.len(), 2);
        for (pairs, a) in seen {
            assert_eq!(pairs, initial);
            assert_eq!(a, Some(b"1".to_vec()));
        }
    }

    #[test]
    fn a_view_read_on_another_thread_while_batches_land_sees_one_state() {
        // Every batch moves one unit from one key to another, while another
        // thread reads the view whole, again and again.
        let capturing = Capturing::new(Kv::new(MemKv::default()));
        let store = Kv::new(capturing.clone());
        let keys: Vec<String> = (0..50).map(|i| format!("r:{i:02}")).collect();
        let writes: Vec<(&str, Option<&str>)> =
            keys.iter().map(|k| (k.as_str(), Some("10"))).collect();
        write(&store, &writes);
        let view = capturing.freeze();
        let initial = all(&store, "r:");
        let writing = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let still_writing = writing.clone();
        let reader = std::thread::spawn(move || {
            let (mut reads, mut wrong) = (0, 0);
            while still_writing.load(std::sync::atomic::Ordering::SeqCst) || reads == 0 {
                reads += 1;
                if all(&view, "r:") != initial {
                    wrong += 1;
                }
            }
            (reads, wrong)
        });
        for round in 1..3000usize {
            let from = &keys[round % keys.len()];
            let to = &keys[0];
            if from == to {
                continue;
            }
            let value = |k: &str| {
                String::from_utf8(store.get(k.as_bytes()).unwrap().unwrap())
                    .unwrap()
                    .parse::<i64>()
                    .unwrap()
            };
            let (a, b) = ((value(from) - 1).to_string(), (value(to) + 1).to_string());
            write(&store, &[(from, Some(&a)), (to, Some(&b))]);
        }
        writing.store(false, std::sync::atomic::Ordering::SeqCst);
        let (reads, wrong) = reader.join().unwrap();
        assert_eq!(
            wrong, 0,
            "{wrong} of {reads} reads of the view saw batches written after it"
        );
        // And the store did change under it.
        assert_ne!(all(&store, "r:"), writes_as_pairs(&keys));
    }
}
