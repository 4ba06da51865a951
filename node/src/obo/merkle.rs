//! Merkle trees of RFC 9162 (section 2.1), over which a node signs a batch
//! of on-behalf-of records at once: the root, and each leaf's audit path
//! from which a verifier recomputes the root.

use sha2::{Digest, Sha256};

/// A node's hash.
pub(super) type Hash = [u8; 32];

/// The hash of leaf `data`, salted: SHA-256 of 0x00, the salt and the data.
pub(super) fn leaf_hash(salt: &[u8], data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(salt);
    h.update(data);
    h.finalize().into()
}

fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The largest power of two smaller than `n` (n ≥ 2).
fn split(n: usize) -> usize {
    debug_assert!(n >= 2);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// The root of the tree whose leaves hash to `leaves` (at least one), and
/// the audit path of every leaf, from the leaf up: O(n log n) work.
pub(super) fn root_and_paths(leaves: &[Hash]) -> (Hash, Vec<Vec<Hash>>) {
    match leaves.len() {
        0 => (Sha256::digest([]).into(), Vec::new()),
        1 => (leaves[0], vec![Vec::new()]),
        n => {
            let k = split(n);
            let (left, mut left_paths) = root_and_paths(&leaves[..k]);
            let (right, right_paths) = root_and_paths(&leaves[k..]);
            for path in &mut left_paths {
                path.push(right);
            }
            left_paths.extend(right_paths.into_iter().map(|mut path| {
                path.push(left);
                path
            }));
            (node_hash(&left, &right), left_paths)
        }
    }
}

/// The root that leaf `leaf`, at `index` of a tree of `size` leaves, has
/// with audit path `path` (RFC 9162, 2.1.3.2); `None` when the path cannot
/// be one of such a leaf.
pub(super) fn root_from_path(leaf: Hash, index: u64, size: u64, path: &[Vec<u8>]) -> Option<Hash> {
    if index >= size {
        return None;
    }
    let (mut f, mut s, mut r) = (index, size - 1, leaf);
    for p in path {
        let p: Hash = p.as_slice().try_into().ok()?;
        if s == 0 {
            return None;
        }
        if f & 1 == 1 || f == s {
            r = node_hash(&p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, &p);
        }
        f >>= 1;
        s >>= 1;
    }
    (s == 0).then_some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(&[7; 32], &i.to_be_bytes()))
            .collect()
    }

    fn bytes(path: Vec<Hash>) -> Vec<Vec<u8>> {
        path.into_iter().map(|h| h.to_vec()).collect()
    }

    #[test]
    fn every_leaf_of_every_tree_size_leads_back_to_its_root() {
        for n in 1..=40 {
            let l = leaves(n);
            let (r, paths) = root_and_paths(&l);
            assert_eq!(paths.len(), n);
            for (m, leaf) in l.iter().enumerate() {
                let path = bytes(paths[m].clone());
                assert_eq!(
                    root_from_path(*leaf, m as u64, n as u64, &path),
                    Some(r),
                    "leaf {m} of {n}"
                );
            }
        }
    }

    #[test]
    fn a_leaf_under_another_index_size_or_path_does_not_lead_to_the_root() {
        let l = leaves(11);
        let (r, paths) = root_and_paths(&l);
        let path = bytes(paths[5].clone());
        assert_ne!(root_from_path(l[5], 4, 11, &path), Some(r));
        // The size shapes the path: one where the leaf is the last.
        assert_ne!(root_from_path(l[5], 5, 6, &path), Some(r));
        assert_ne!(root_from_path(l[6], 5, 11, &path), Some(r));
        assert_eq!(
            root_from_path(l[5], 11, 11, &path),
            None,
            "index past the size"
        );
        let mut altered = path.clone();
        altered[1][0] ^= 1;
        assert_ne!(root_from_path(l[5], 5, 11, &altered), Some(r));
        let mut longer = path.clone();
        longer.push(vec![0; 32]);
        assert_eq!(root_from_path(l[5], 5, 11, &longer), None);
        assert_eq!(
            root_from_path(l[5], 5, 11, &path[..2]),
            None,
            "a path too short"
        );
        let mut short_hash = path;
        short_hash[0].pop();
        assert_eq!(root_from_path(l[5], 5, 11, &short_hash), None);
    }

    #[test]
    fn the_root_of_two_leaves_hashes_them_as_rfc_9162_says() {
        let l = leaves(2);
        let mut h = Sha256::new();
        h.update([1u8]);
        h.update(l[0]);
        h.update(l[1]);
        assert_eq!(root_and_paths(&l).0, <Hash>::from(h.finalize()));
        assert_eq!(root_and_paths(&l[..1]).0, l[0]);
    }
}
