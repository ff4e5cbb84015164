//! Header-split translation against the whole packet: arbitrary bytes as a packet, cut at an
//! arbitrary point, through `Nat::outbound_head_with` (the head only, the rest left where it
//! is) and, on a second NAT of the same configuration, through `Nat::outbound_with` (the
//! whole packet). Never a panic; when the head-only call takes the packet, its verdict and
//! the packet (head + untouched rest) equal the whole translation's, but for an IPv4 header
//! checksum of 0x0000 against 0xffff (one's complement's two zeros: the same checksum; this
//! target found it); when it does not, the packet is unchanged.
//!
//! Input: `[cut_lo, cut_hi, ctl, packet...]`; `ctl` bit 0 asks for a partial checksum
//! (`L4Checksum::Partial`), bit 1 sends the packet twice (the second through the flow the
//! first made).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nat::testing;
use nat::{Instant, L4Checksum};

fuzz_target!(|data: &[u8]| {
    let [lo, hi, ctl, packet @ ..] = data else {
        return;
    };
    let cut = usize::from(u16::from_le_bytes([*lo, *hi])) % (packet.len() + 1);
    let l4 = if ctl & 1 != 0 {
        L4Checksum::Partial
    } else {
        L4Checksum::Complete
    };
    let (mut whole_nat, mut head_nat) = (testing::nat(), testing::nat());
    let rounds = if ctl & 2 != 0 { 2 } else { 1 };
    for round in 0..rounds {
        let now = Instant::from_secs(round);
        let mut split = packet.to_vec();
        let total = split.len();
        let got = head_nat.outbound_head_with(&mut split[..cut], total, now, l4);
        let Some(verdict) = got else {
            assert_eq!(split, packet, "a packet not taken is left alone");
            return;
        };
        let mut whole = packet.to_vec();
        assert_eq!(verdict, whole_nat.outbound_with(&mut whole, now, l4));
        assert!(
            testing::same_packet(&split, &whole),
            "head + rest equal the whole translation: {split:02x?} against {whole:02x?}"
        );
    }
});
