//! Interface names: validation per OS and packing into the C `ifr_name` array.
//!
//! Pure functions, unit-tested on every host.

use libc::c_char;

use crate::error::OpenError;

/// The longest interface name (IFNAMSIZ 16 minus the NUL).
pub(crate) const MAX_NAME_LEN: usize = IFNAMSIZ - 1;

/// Checks a Linux interface name the way the kernel's `dev_valid_name` does (a `%d` in it
/// is a template the kernel fills in).
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) fn validate_linux(name: &str) -> Result<(), OpenError> {
    let invalid = |reason| {
        Err(OpenError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.len() > MAX_NAME_LEN {
        return Err(OpenError::NameTooLong(name.to_owned()));
    }
    if name.is_empty() {
        return invalid("empty");
    }
    if name == "." || name == ".." {
        return invalid("\".\" and \"..\" are reserved");
    }
    if name
        .bytes()
        .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
    {
        return invalid("contains '/', ':', NUL or whitespace");
    }
    Ok(())
}

/// Parses a macOS utun name `utunN` into the control unit to connect to (`N + 1`).
#[cfg_attr(not(target_os = "macos"), allow(dead_code))]
pub(crate) fn parse_utun_unit(name: &str) -> Result<u32, OpenError> {
    let invalid = |reason| {
        Err(OpenError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.len() > MAX_NAME_LEN {
        return Err(OpenError::NameTooLong(name.to_owned()));
    }
    let Some(digits) = name.strip_prefix("utun") else {
        return invalid("a macOS utun interface must be named utunN");
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return invalid("a macOS utun interface must be named utunN with N a decimal number");
    }
    if digits.len() > 1 && digits.starts_with('0') {
        return invalid("the unit number of utunN has no leading zeros");
    }
    match digits.parse::<u32>().ok().and_then(|n| n.checked_add(1)) {
        Some(unit) => Ok(unit),
        None => invalid("the unit number of utunN is too large"),
    }
}

/// Packs a validated name into a NUL-padded `ifr_name`.
///
/// # Errors
/// [`OpenError::NameTooLong`] if it does not fit with its NUL.
pub(crate) fn pack(name: &str) -> Result<[c_char; IFNAMSIZ], OpenError> {
    if name.len() > MAX_NAME_LEN {
        return Err(OpenError::NameTooLong(name.to_owned()));
    }
    let mut out = [0 as c_char; IFNAMSIZ];
    for (dst, src) in out.iter_mut().zip(name.bytes()) {
        *dst = src as c_char;
    }
    Ok(out)
}

/// Reads a NUL-terminated name back from an `ifr_name` (or a `UTUN_OPT_IFNAME` buffer).
pub(crate) fn unpack(raw: &[c_char]) -> String {
    let bytes: Vec<u8> = raw
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

const IFNAMSIZ: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_names_follow_dev_valid_name() {
        assert!(validate_linux("tun0").is_ok());
        assert!(validate_linux("hn%d").is_ok());
        assert!(validate_linux("abcdefghijklmno").is_ok()); // 15 bytes
        assert!(matches!(
            validate_linux("abcdefghijklmnop"),
            Err(OpenError::NameTooLong(n)) if n == "abcdefghijklmnop"
        ));
        for bad in ["", ".", "..", "a/b", "a b", "a:1", "a\0"] {
            assert!(
                matches!(validate_linux(bad), Err(OpenError::InvalidName { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn utun_names_map_to_unit_plus_one() {
        assert_eq!(parse_utun_unit("utun0").ok(), Some(1));
        assert_eq!(parse_utun_unit("utun7").ok(), Some(8));
        assert_eq!(parse_utun_unit("utun123").ok(), Some(124));
        for bad in [
            "tun0",
            "utun",
            "utunx",
            "utun-1",
            "utun01",
            "utun4294967295",
            "UTUN1",
        ] {
            assert!(
                matches!(parse_utun_unit(bad), Err(OpenError::InvalidName { .. })),
                "{bad:?}"
            );
        }
        assert!(matches!(
            parse_utun_unit("utun123456789012"),
            Err(OpenError::NameTooLong(_))
        ));
    }

    #[test]
    fn pack_nul_pads_and_unpack_reads_back() {
        let raw = pack("tun7").unwrap_or([1; IFNAMSIZ]);
        assert_eq!(
            raw[..5],
            [
                b't' as c_char,
                b'u' as c_char,
                b'n' as c_char,
                b'7' as c_char,
                0
            ]
        );
        assert!(raw[4..].iter().all(|&c| c == 0));
        assert_eq!(unpack(&raw), "tun7");
        let full = pack("abcdefghijklmno").unwrap_or([0; IFNAMSIZ]);
        assert_eq!(full[15], 0);
        assert_eq!(unpack(&full), "abcdefghijklmno");
        assert!(matches!(
            pack("abcdefghijklmnop"),
            Err(OpenError::NameTooLong(_))
        ));
    }
}
