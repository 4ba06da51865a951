//! Text as people type it: Vietnamese arrives composed (NFC) or decomposed
//! (NFD, from some keyboards and macOS), and the two never compare equal.
//! Everything the catalog stores is NFC.

use unicode_normalization::char::is_combining_mark;
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

/// `s` as people search it: without diacritics and in lower case, so that
/// "ho tich", "Hộ Tịch" and "HỘ TỊCH" (composed or not) are all "ho tich".
/// Decomposes (NFD), drops the combining marks, maps đ and Đ (a letter of
/// its own, not d with a mark) to d, and lowercases. Compare folded text
/// with folded text: `fold(record).contains(&fold(keyword))`.
pub fn fold(s: &str) -> String {
    s.nfd()
        .filter(|c| !is_combining_mark(*c))
        .flat_map(|c| match c {
            'đ' | 'Đ' => 'd'.to_lowercase(),
            other => other.to_lowercase(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_drops_diacritics_and_case() {
        assert_eq!(fold("Hộ tịch"), "ho tich");
        assert_eq!(fold("HỘ TỊCH"), "ho tich");
        assert_eq!(fold("Ho\u{0302}\u{0323} ti\u{0323}ch"), "ho tich");
        assert_eq!(fold("Đất đai Đông Hưng"), "dat dai dong hung");
        assert_eq!(fold("Sở Khoa học và Công nghệ"), "so khoa hoc va cong nghe");
        assert_eq!(fold("ho tich"), "ho tich");
        assert!(fold("Dịch vụ Hộ tịch điện tử").contains(&fold("ho tich")));
        assert!(fold("Dịch vụ Hộ tịch").contains(&fold("HỘ TỊCH")));
    }

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
