//! The virtio-net header and config space, laid out by virtio-bindings' types.
//!
//! # Theory of operation
//!
//! Every frame on the rings starts with a `virtio_net_hdr_v1` (12 bytes with VERSION_1 or
//! MRG_RXBUF, 10 without `num_buffers` otherwise). [`VnetHdr`] is its representation in
//! smoltcp's style — `parse` from the header bytes, `emit` into them — with every field's
//! place taken from the binding's struct (`offset_of!`), not from hand-counted offsets. The
//! same goes for the config space ([`config_space`], `virtio_net_config`). Multi-byte fields
//! are little-endian (virtio 1.x; podwire requires VERSION_1).

use std::mem::{offset_of, size_of};

use podwire_frame::PartialCsum;
use virtio_bindings::bindings::virtio_net::{
    virtio_net_config, virtio_net_hdr_v1,
    virtio_net_hdr_v1__bindgen_ty_1__bindgen_ty_1 as CsumFields, VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_S_LINK_UP,
};

/// The virtio-net header with VERSION_1 or MRG_RXBUF (`virtio_net_hdr_v1`).
pub const VNET_HDR_LEN: usize = size_of::<virtio_net_hdr_v1>();

/// Where each field of `virtio_net_hdr_v1` lives.
mod field {
    use super::*;

    pub const FLAGS: usize = offset_of!(virtio_net_hdr_v1, flags);
    pub const GSO_TYPE: usize = offset_of!(virtio_net_hdr_v1, gso_type);
    pub const HDR_LEN: usize = offset_of!(virtio_net_hdr_v1, hdr_len);
    pub const GSO_SIZE: usize = offset_of!(virtio_net_hdr_v1, gso_size);
    const UNION: usize = offset_of!(virtio_net_hdr_v1, __bindgen_anon_1);
    pub const CSUM_START: usize = UNION + offset_of!(CsumFields, csum_start);
    pub const CSUM_OFFSET: usize = UNION + offset_of!(CsumFields, csum_offset);
    pub const NUM_BUFFERS: usize = offset_of!(virtio_net_hdr_v1, num_buffers);
}

const _: () = assert!(VNET_HDR_LEN == 12 && field::NUM_BUFFERS == 10);

/// What a virtio-net header says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    /// VIRTIO_NET_HDR_F_NEEDS_CSUM, with where the checksum lives.
    pub csum: Option<PartialCsum>,
    /// VIRTIO_NET_HDR_GSO_*, the ECN bit cleared.
    pub gso_type: u8,
    /// Length of the headers in front of each segment's payload (GSO).
    pub hdr_len: u16,
    /// Payload bytes per segment (GSO).
    pub gso_size: u16,
    /// Chains a merged RX frame spans (MRG_RXBUF; 1 otherwise).
    pub num_buffers: u16,
}

fn u16_at(bytes: &[u8; VNET_HDR_LEN], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn put_u16(bytes: &mut [u8; VNET_HDR_LEN], at: usize, value: u16) {
    bytes[at..at + 2].copy_from_slice(&value.to_le_bytes());
}

impl VnetHdr {
    /// Reads a header; bytes the guest did not send (a 10-byte header) read as zero.
    pub fn parse(bytes: &[u8; VNET_HDR_LEN]) -> VnetHdr {
        let flags = u32::from(bytes[field::FLAGS]);
        VnetHdr {
            csum: (flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0).then(|| PartialCsum {
                start: u16_at(bytes, field::CSUM_START),
                offset: u16_at(bytes, field::CSUM_OFFSET),
            }),
            gso_type: bytes[field::GSO_TYPE] & !(VIRTIO_NET_HDR_GSO_ECN as u8),
            hdr_len: u16_at(bytes, field::HDR_LEN),
            gso_size: u16_at(bytes, field::GSO_SIZE),
            num_buffers: u16_at(bytes, field::NUM_BUFFERS),
        }
    }

    /// The header's bytes; write the first 10 or 12 as negotiated.
    pub fn emit(&self) -> [u8; VNET_HDR_LEN] {
        let mut bytes = [0u8; VNET_HDR_LEN];
        if let Some(c) = self.csum {
            bytes[field::FLAGS] = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
            put_u16(&mut bytes, field::CSUM_START, c.start);
            put_u16(&mut bytes, field::CSUM_OFFSET, c.offset);
        }
        bytes[field::GSO_TYPE] = self.gso_type;
        put_u16(&mut bytes, field::HDR_LEN, self.hdr_len);
        put_u16(&mut bytes, field::GSO_SIZE, self.gso_size);
        put_u16(&mut bytes, field::NUM_BUFFERS, self.num_buffers);
        bytes
    }
}

/// Bytes of `virtio_net_config` podwire serves: up to and including `mtu`.
pub const CONFIG_LEN: usize = offset_of!(virtio_net_config, mtu) + 2;

/// The config space: the MAC, link up, one queue pair, the MTU.
pub fn config_space(mac: [u8; 6], mtu: u16) -> [u8; CONFIG_LEN] {
    let mut cfg = [0u8; CONFIG_LEN];
    let mac_at = offset_of!(virtio_net_config, mac);
    cfg[mac_at..mac_at + 6].copy_from_slice(&mac);
    let fields = [
        (
            offset_of!(virtio_net_config, status),
            VIRTIO_NET_S_LINK_UP as u16,
        ),
        (offset_of!(virtio_net_config, max_virtqueue_pairs), 1),
        (offset_of!(virtio_net_config, mtu), mtu),
    ];
    for (at, value) in fields {
        cfg[at..at + 2].copy_from_slice(&value.to_le_bytes());
    }
    cfg
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::bindings::virtio_net::{
        VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_UDP_L4,
    };

    #[test]
    fn the_layout_is_the_specs() {
        // virtio 1.2 5.1.6: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset,
        // num_buffers.
        let h = VnetHdr {
            csum: Some(PartialCsum {
                start: 0x0122,
                offset: 0x0010,
            }),
            gso_type: VIRTIO_NET_HDR_GSO_TCPV4 as u8,
            hdr_len: 0x0036,
            gso_size: 0x05a8,
            num_buffers: 3,
        };
        let bytes = h.emit();
        assert_eq!(
            bytes,
            [1, 1, 0x36, 0, 0xa8, 0x05, 0x22, 0x01, 0x10, 0, 3, 0]
        );
        assert_eq!(VnetHdr::parse(&bytes), h);
    }

    #[test]
    fn the_ecn_bit_is_cleared_and_no_flag_means_no_checksum() {
        let mut bytes = [0u8; VNET_HDR_LEN];
        bytes[1] = (VIRTIO_NET_HDR_GSO_UDP_L4 | VIRTIO_NET_HDR_GSO_ECN) as u8;
        bytes[6] = 9;
        let h = VnetHdr::parse(&bytes);
        assert_eq!(h.gso_type, VIRTIO_NET_HDR_GSO_UDP_L4 as u8);
        assert_eq!(h.csum, None);
    }

    #[test]
    fn config_space_has_mac_status_pairs_and_mtu() {
        let cfg = config_space([2, 0, 0, 0, 0, 7], 1500);
        assert_eq!(cfg, [2, 0, 0, 0, 0, 7, 1, 0, 1, 0, 0xdc, 0x05]);
    }
}
