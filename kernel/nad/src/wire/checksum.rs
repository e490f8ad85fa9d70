//! The Internet checksum (RFC 1071): the one's-complement sum of 16-bit big-endian words.

use super::Ipv4Addr;

/// Adds `data` as big-endian 16-bit words (an odd last byte padded with zero) to `sum`.
///
/// The accumulator is 64 bits wide, so no input a `usize` can index overflows it.
pub fn accumulate(mut sum: u64, data: &[u8]) -> u64 {
    let mut words = data.chunks_exact(2);
    for word in &mut words {
        sum += u64::from(u16::from_be_bytes([word[0], word[1]]));
    }
    if let [last] = words.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

/// Folds a 64-bit accumulator into a 16-bit one's-complement sum (not complemented).
pub fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The checksum of `data`: the complement of its one's-complement sum.
pub fn internet_checksum(data: &[u8]) -> u16 {
    !fold(accumulate(0, data))
}

/// The one's-complement sum of the IPv4 pseudo header (RFC 768, RFC 793) for a transport
/// segment of `length` bytes carried as `protocol`, as an accumulator for [`accumulate`].
pub fn ipv4_pseudo_header(
    source: Ipv4Addr,
    destination: Ipv4Addr,
    protocol: u8,
    length: u16,
) -> u64 {
    let sum = accumulate(0, &source.octets());
    let sum = accumulate(sum, &destination.octets());
    sum + u64::from(protocol) + u64::from(length)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: the sum of these words is ddf2 (folded), checksum 220d.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(accumulate(0, &data)), 0xddf2);
        assert_eq!(internet_checksum(&data), 0x220d);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(
            internet_checksum(&[0x12, 0x34, 0x56]),
            internet_checksum(&[0x12, 0x34, 0x56, 0x00])
        );
        assert_eq!(internet_checksum(&[]), 0xffff);
    }

    #[test]
    fn large_input_does_not_overflow() {
        let data = [0xffu8; 70_000];
        assert_eq!(fold(accumulate(0, &data)), 0xffff);
    }
}
