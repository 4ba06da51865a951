//! Text as people type it: Vietnamese arrives composed (NFC) or decomposed
//! (NFD, from some keyboards and macOS), and the two never compare equal.
//! Everything the catalog stores is NFC.

use unicode_normalization::{UnicodeNormalization, is_nfc};

/// `s` in Unicode Normalization Form C.
pub fn nfc(s: &str) -> String {
    if is_nfc(s) {
        s.to_owned()
    } else {
        s.nfc().collect()
    }
}

/// Normalises `s` to NFC in place.
pub fn to_nfc(s: &mut String) {
    if !is_nfc(s) {
        *s = s.nfc().collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decomposed_vietnamese_is_stored_composed() {
        let nfd = "Ho\u{0302}\u{0323} ti\u{0323}ch";
        assert_ne!(nfd, "Hộ tịch");
        assert_eq!(nfc(nfd), "Hộ tịch");
        let mut s = nfd.to_owned();
        to_nfc(&mut s);
        assert_eq!(s, "Hộ tịch");
    }
}
