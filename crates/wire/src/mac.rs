//! Ethernet (EUI-48) addresses.

use core::fmt;
use core::str::FromStr;

/// An Ethernet (EUI-48) address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// ff:ff:ff:ff:ff:ff.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// The six octets.
    pub const fn octets(self) -> [u8; 6] {
        self.0
    }

    /// Whether the group (multicast/broadcast) bit is set.
    pub const fn is_multicast(self) -> bool {
        self.0[0] & 1 == 1
    }

    /// Packs the address into the low 48 bits of a `u64` (for atomics).
    pub const fn to_u64(self) -> u64 {
        let o = self.0;
        (o[0] as u64) << 40
            | (o[1] as u64) << 32
            | (o[2] as u64) << 24
            | (o[3] as u64) << 16
            | (o[4] as u64) << 8
            | o[5] as u64
    }

    /// The inverse of [`MacAddr::to_u64`] (the high 16 bits are ignored).
    pub const fn from_u64(v: u64) -> Self {
        MacAddr([
            (v >> 40) as u8,
            (v >> 32) as u8,
            (v >> 24) as u8,
            (v >> 16) as u8,
            (v >> 8) as u8,
            v as u8,
        ])
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            o[0], o[1], o[2], o[3], o[4], o[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = ParseMacError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for o in &mut out {
            let p = parts.next().ok_or_else(|| ParseMacError::new(s))?;
            if p.is_empty() || p.len() > 2 {
                return Err(ParseMacError::new(s));
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| ParseMacError::new(s))?;
        }
        if parts.next().is_some() {
            return Err(ParseMacError::new(s));
        }
        Ok(MacAddr(out))
    }
}

/// The text is not six colon-separated hex octets. Keeps the first
/// [`ParseMacError::KEPT`] bytes of the text (cut at a character boundary) without allocating.
#[derive(Clone, PartialEq, Eq)]
pub struct ParseMacError {
    text: [u8; ParseMacError::KEPT],
    len: u8,
    cut: bool,
}

impl ParseMacError {
    /// How many bytes of the rejected text are kept.
    pub const KEPT: usize = 40;

    fn new(s: &str) -> Self {
        let mut len = s.len().min(Self::KEPT);
        while !s.is_char_boundary(len) {
            len -= 1;
        }
        let mut text = [0u8; Self::KEPT];
        text[..len].copy_from_slice(&s.as_bytes()[..len]);
        ParseMacError {
            text,
            len: len as u8, // len <= KEPT = 40
            cut: len < s.len(),
        }
    }

    /// The rejected text (its first [`ParseMacError::KEPT`] bytes).
    pub fn input(&self) -> &str {
        // The kept bytes end on a character boundary of a `&str`, so they are UTF-8.
        core::str::from_utf8(&self.text[..usize::from(self.len)]).unwrap_or("")
    }
}

impl fmt::Debug for ParseMacError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ParseMacError").field(&self.input()).finish()
    }
}

impl fmt::Display for ParseMacError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid mac address {:?}", self.input())?;
        if self.cut {
            f.write_str(" (cut)")?;
        }
        Ok(())
    }
}

impl core::error::Error for ParseMacError {}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::string::ToString;

    use super::*;

    #[test]
    fn mac_parses_prints_and_packs() {
        let m: MacAddr = "52:54:00:ab:cd:ef".parse().unwrap();
        assert_eq!(m.0, [0x52, 0x54, 0, 0xab, 0xcd, 0xef]);
        assert_eq!(m.to_string(), "52:54:00:ab:cd:ef");
        assert_eq!(MacAddr::from_u64(m.to_u64()), m);
        assert!("52:54:00:ab:cd".parse::<MacAddr>().is_err());
        assert!("52:54:00:ab:cd:ef:01".parse::<MacAddr>().is_err());
        assert!("52:54:00:ab:cd:zz".parse::<MacAddr>().is_err());
        assert!("52:54:00:ab:cd:".parse::<MacAddr>().is_err());
        assert!("52:54:00:ab:cd:0ef".parse::<MacAddr>().is_err());
        assert!(MacAddr::BROADCAST.is_multicast());
        assert!(!m.is_multicast());
    }

    #[test]
    fn parse_error_carries_the_text() {
        let e = "52:54:zz".parse::<MacAddr>().unwrap_err();
        assert_eq!(e.input(), "52:54:zz");
        assert_eq!(e.to_string(), "invalid mac address \"52:54:zz\"");
        assert_eq!(std::format!("{e:?}"), "ParseMacError(\"52:54:zz\")");
        // Long text is cut at a character boundary.
        let long = "é".repeat(30);
        let e = long.parse::<MacAddr>().unwrap_err();
        assert_eq!(e.input(), "é".repeat(20));
        assert!(e.to_string().ends_with("(cut)"));
    }
}
