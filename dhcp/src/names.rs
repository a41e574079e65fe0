//! DNS name encoding: the compressed DHCPv4 domain search option (119,
//! RFC 3397) and the uncompressed form DHCPv6 (option 24, RFC 8415 10) and
//! router advertisements (DNSSL, RFC 8106 5.2) require.
//!
//! The compressed encoder runs only when the configuration changes, so it
//! allocates freely. The uncompressed writer is also used per router
//! advertisement and allocates nothing.

/// Longest name on the wire, length bytes and root label included (RFC 1035).
const MAX_WIRE_NAME: usize = 255;
const MAX_LABEL: usize = 63;
/// A compression pointer has 14 bits of offset.
const MAX_POINTER_TARGET: usize = 0x3fff;

/// A domain name as configured, validated: podwire's name format in smoltcp's `Repr` shape.
/// [`DomainName::parse`] enforces the RFC 1035 limits on the presentation form (a single
/// trailing dot is accepted, because operators copy names from resolv.conf and zone files,
/// where it is common); [`DomainName::buffer_len`] and [`DomainName::emit`] give the
/// uncompressed RFC 1035 3.1 wire form (length-prefixed labels, then the root label).
/// Nothing allocates. podwire never reads names off the wire, so there is no view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DomainName<'a> {
    /// The name without its trailing dot.
    body: &'a str,
    wire_len: usize,
}

impl<'a> DomainName<'a> {
    pub fn parse(name: &'a str) -> Result<DomainName<'a>, &'static str> {
        let body = name.strip_suffix('.').unwrap_or(name);
        if body.is_empty() {
            return Err("empty name");
        }
        // The terminating root label.
        let mut wire_len = 1usize;
        for label in body.split('.') {
            if label.is_empty() {
                return Err("empty label");
            }
            if label.len() > MAX_LABEL {
                return Err("label longer than 63 bytes");
            }
            wire_len += 1 + label.len();
        }
        if wire_len > MAX_WIRE_NAME {
            return Err("name longer than 255 bytes on the wire");
        }
        Ok(DomainName { body, wire_len })
    }

    pub fn labels(&self) -> impl Iterator<Item = &'a str> {
        self.body.split('.')
    }

    /// Uncompressed wire length, length bytes and root label included.
    pub fn buffer_len(&self) -> usize {
        self.wire_len
    }

    /// Feeds the uncompressed wire form to `put`.
    pub fn emit(&self, mut put: impl FnMut(&[u8])) {
        for label in self.labels() {
            // parse() capped labels at 63 bytes, so this cannot truncate.
            put(&[label.len() as u8]);
            put(label.as_bytes());
        }
        put(&[0]);
    }
}

/// Splits a presentation-format name into labels, enforcing RFC 1035 limits
/// ([`DomainName::parse`]).
pub fn split_labels(name: &str) -> Result<Vec<&str>, &'static str> {
    Ok(DomainName::parse(name)?.labels().collect())
}

/// Validates a name as [`DomainName::parse`] does and returns its
/// uncompressed wire length (length bytes and root label included).
pub fn wire_len(name: &str) -> Result<usize, &'static str> {
    DomainName::parse(name).map(|n| n.buffer_len())
}

/// Feeds the uncompressed RFC 1035 3.1 encoding of a valid name to `put`
/// and returns its length; an invalid name feeds nothing.
pub fn write_uncompressed(name: &str, put: impl FnMut(&[u8])) -> Result<usize, &'static str> {
    let name = DomainName::parse(name)?;
    name.emit(put);
    Ok(name.buffer_len())
}

/// Encodes names back to back without compression, as DHCPv6 option 24
/// and the DNSSL option require. Invalid names are skipped; the first one
/// is reported with its index.
pub fn encode_uncompressed(names: &[String]) -> (Vec<u8>, Option<(usize, &'static str)>) {
    let mut out = Vec::new();
    let mut first_error = None;
    for (index, name) in names.iter().enumerate() {
        if let Err(reason) = write_uncompressed(name, |bytes| out.extend_from_slice(bytes)) {
            first_error.get_or_insert((index, reason));
        }
    }
    (out, first_error)
}

/// Encodes a search list as the payload of option 119, compressing shared
/// suffixes with pointers.
///
/// Compression is worth its few lines here: search lists are typically
/// `ns.svc.cluster.local`, `svc.cluster.local`, `cluster.local`, which share
/// almost everything, and the reply must fit in 548 bytes alongside the
/// other options. Pointer offsets are relative to the start of the
/// (RFC 3396 concatenated) option data, as RFC 3397 section 2 requires.
///
/// Suffixes are compared byte-for-byte, not case-insensitively, so the
/// guest sees each name exactly as configured.
///
/// Invalid names are skipped; the first one is reported with its index so
/// strict callers can refuse the configuration.
pub fn encode_search_list(names: &[String]) -> (Vec<u8>, Option<(usize, &'static str)>) {
    let mut out = Vec::new();
    let mut first_error = None;
    // Every name written so far, with the offset at which each of its
    // labels (followed by the rest of the name) can be found in `out`.
    let mut written: Vec<(Vec<&str>, Vec<usize>)> = Vec::new();

    for (index, name) in names.iter().enumerate() {
        let labels = match split_labels(name) {
            Ok(labels) => labels,
            Err(reason) => {
                first_error.get_or_insert((index, reason));
                continue;
            }
        };

        // Longest suffix of this name that some earlier name ends with:
        // (first label of the suffix, earlier name, its label index).
        let shared = (0..labels.len()).find_map(|start| {
            let suffix = labels.get(start..)?;
            written
                .iter()
                .enumerate()
                .find_map(|(prev_index, (prev, offsets))| {
                    let skip = prev.len().checked_sub(suffix.len())?;
                    let prev_suffix = prev.get(skip..)?;
                    let target = *offsets.get(skip)?;
                    (prev_suffix == suffix && target <= MAX_POINTER_TARGET)
                        .then_some((start, prev_index, skip))
                })
        });

        let literal_count = shared.map_or(labels.len(), |(start, _, _)| start);
        let mut offsets = Vec::with_capacity(labels.len());
        for label in labels.iter().take(literal_count) {
            offsets.push(out.len());
            // split_labels capped labels at 63 bytes, so this cannot truncate.
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
        match shared {
            Some((_, prev_index, skip)) => {
                let inherited = written
                    .get(prev_index)
                    .and_then(|(_, prev_offsets)| prev_offsets.get(skip..))
                    .unwrap_or(&[]);
                let target = inherited.first().copied().unwrap_or(0);
                offsets.extend_from_slice(inherited);
                out.push(0xc0 | ((target >> 8) as u8 & 0x3f));
                out.push(target as u8);
            }
            None => out.push(0),
        }
        written.push((labels, offsets));
    }
    (out, first_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn rfc3397_example() {
        // The worked example in RFC 3397 section 2, byte for byte.
        let (bytes, err) = encode_search_list(&list(&["eng.apple.com.", "marketing.apple.com."]));
        assert_eq!(err, None);
        let mut expected = Vec::new();
        expected.extend_from_slice(b"\x03eng\x05apple\x03com\x00");
        expected.extend_from_slice(b"\x09marketing\xc0\x04");
        assert_eq!(bytes, expected);
        assert_eq!(bytes.len(), 27);
    }

    #[test]
    fn chained_pointers_reuse_inherited_offsets() {
        // The third name's suffix "svc.cluster.local" was itself written
        // as a pointer by the second name's "cluster.local" tail; the
        // pointer must land on a literal copy of "svc".
        let (bytes, err) = encode_search_list(&list(&[
            "cluster.local",
            "svc.cluster.local",
            "ns.svc.cluster.local",
        ]));
        assert_eq!(err, None);
        let mut expected = Vec::new();
        // 0: cluster.local
        expected.extend_from_slice(b"\x07cluster\x05local\x00");
        // 15: svc -> 0
        expected.extend_from_slice(b"\x03svc\xc0\x00");
        // 21: ns -> 15
        expected.extend_from_slice(b"\x02ns\xc0\x0f");
        assert_eq!(bytes, expected);
    }

    #[test]
    fn duplicate_name_becomes_a_bare_pointer() {
        let (bytes, _) = encode_search_list(&list(&["a.b", "a.b"]));
        assert_eq!(bytes, b"\x01a\x01b\x00\xc0\x00");
    }

    #[test]
    fn no_shared_suffix_is_uncompressed() {
        let (bytes, _) = encode_search_list(&list(&["example.com", "example.org"]));
        assert_eq!(bytes, b"\x07example\x03com\x00\x07example\x03org\x00");
    }

    #[test]
    fn suffix_comparison_is_case_sensitive() {
        let (bytes, _) = encode_search_list(&list(&["a.COM", "b.com"]));
        assert_eq!(bytes, b"\x01a\x03COM\x00\x01b\x03com\x00");
    }

    #[test]
    fn invalid_names_are_skipped_and_reported() {
        let long_label = "x".repeat(64);
        let names = list(&["", "a..b", &long_label, "ok.example", "."]);
        let (bytes, err) = encode_search_list(&names);
        assert_eq!(err, Some((0, "empty name")));
        assert_eq!(bytes, b"\x02ok\x07example\x00");
    }

    #[test]
    fn uncompressed_names_are_plain_label_sequences() {
        let (bytes, err) = encode_uncompressed(&list(&["eng.apple.com.", "apple.com", "a..b"]));
        assert_eq!(err, Some((2, "empty label")));
        assert_eq!(bytes, b"\x03eng\x05apple\x03com\x00\x05apple\x03com\x00");
        assert_eq!(wire_len("eng.apple.com"), Ok(15));
        assert_eq!(wire_len("eng.apple.com."), Ok(15));
        let mut fed = Vec::new();
        assert!(write_uncompressed("", |b| fed.extend_from_slice(b)).is_err());
        assert!(fed.is_empty());
    }

    #[test]
    fn label_and_name_limits() {
        assert!(split_labels(&"x".repeat(63)).is_ok());
        assert!(split_labels(&"x".repeat(64)).is_err());
        // 4 labels of 63 bytes: 4 * 64 + 1 = 257 bytes on the wire.
        let too_long = vec!["x".repeat(63); 4].join(".");
        assert!(split_labels(&too_long).is_err());
        // 3 * 64 + 62 + 1 = 255 bytes: exactly at the limit.
        let at_limit = format!("{}.{}", vec!["x".repeat(63); 3].join("."), "y".repeat(61));
        assert!(split_labels(&at_limit).is_ok());
        assert_eq!(split_labels("a.b."), Ok(vec!["a", "b"]));
        assert!(split_labels("a.b..").is_err());
    }
}
