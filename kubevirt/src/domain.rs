//! Rewriting virt-launcher's libvirt domain for podwire, by splicing.
//!
//! Theory of operation. The domain XML is parsed once with roxmltree, which keeps every node's
//! byte range in the original text. [`plan`] validates everything and records a list of splices
//! (a byte range and its replacement); [`Plan::apply`] copies the original text around them.
//! Nothing outside the spliced ranges is re-serialized, so interfaces of other bindings, disks,
//! comments, attribute quoting and whitespace come out byte-for-byte as they went in. Either
//! the whole plan succeeds or the caller gets an error and the domain is not touched.
//!
//! Which domain interface belongs to which VMI interface: virt-launcher's converter gives every
//! interface it generates the user alias `ua-<VMI interface name>` (`<alias name="ua-default"/>`).
//! A binding plugin registered without `domainAttachmentType` gets no domain interface at all
//! (the plugin must add one); with `domainAttachmentType: tap` it gets an `<interface
//! type="ethernet">` carrying the alias, MAC, model, PCI address, boot order, ACPI index and
//! ROM setting, and, after virt-launcher's network setup, `<mtu>` and `<target>`. So:
//! - an interface aliased `ua-<name>` is rewritten into `type="vhostuser"`: its `<source>` is
//!   replaced by podwire's socket in client mode (podwire listens, QEMU connects), `mac`,
//!   `model`, `address`, `boot`, `alias`, `acpi`, `rom` and `link` are kept verbatim, and the
//!   tap-specific children (`target`, `driver`, ...) are dropped, and so is `<mtu>`, which
//!   libvirt refuses on vhost-user: its size is handed to podwire ([`Plan::mtu`]) instead;
//! - a missing one is added, built from the VMI interface the way the converter would build it.
//!
//! vhost-user needs guest memory podwire can map: `<memoryBacking>` gets `<source type="memfd">`
//! (unless a source is already there) and `<access mode="shared">`. Hugepages, allocation and
//! the rest of an existing `<memoryBacking>` stay as they are; an access mode other than shared
//! or an anonymous source cannot work with vhost-user and is an error.

use std::fmt::Write as _;
use std::ops::Range;

use roxmltree::{Document, Node};

/// What the domain needs to know about one podwire NIC.
#[derive(Debug, Clone, Default)]
pub struct NicSpec {
    /// The VMI interface's name (the alias is `ua-<name>`).
    pub name: String,
    /// podwire's socket as QEMU (in virt-launcher's container) sees it.
    pub socket: String,
    pub mac: Option<String>,
    /// The VMI's model; `None` or "virtio" means virtio.
    pub model: Option<String>,
    pub pci_address: Option<String>,
    pub boot_order: Option<u32>,
    pub acpi_index: Option<u32>,
    pub virtio_transitional: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DomainError {
    #[error("the domain XML does not parse: {0}")]
    Parse(String),
    #[error("the domain XML has no <domain> root")]
    NoDomain,
    #[error("the domain has no <devices>")]
    NoDevices,
    #[error("the domain's <devices> is empty: not a domain virt-launcher generates")]
    EmptyDevices,
    #[error("the domain has {1} interfaces aliased ua-{0}")]
    DuplicateAlias(String, usize),
    #[error(
        "interface {0:?}: model {1:?} cannot be served over vhost-user (podwire needs virtio)"
    )]
    NotVirtio(String, String),
    #[error("interface {0:?}: bad PCI address {1:?} (expected DDDD:BB:SS.F)")]
    BadPciAddress(String, String),
    #[error("interface {0:?}: bad <mtu size={1:?}>")]
    BadMtu(String, String),
    #[error("memoryBacking access mode {0:?}: vhost-user needs shared memory")]
    AccessNotShared(String),
    #[error("memoryBacking source {0:?}: vhost-user needs file-backed memory (memfd or file)")]
    SourceNotShareable(String),
    #[error("the rewritten domain does not parse ({0}): not applied")]
    Broken(String),
}

/// A validated rewrite, ready to apply.
#[derive(Debug)]
pub struct Plan<'a> {
    xml: &'a str,
    splices: Vec<(Range<usize>, String)>,
    mtus: Vec<(String, Option<u16>)>,
}

impl Plan<'_> {
    /// The `<mtu size>` virt-launcher put on NIC `name`'s interface, if any.
    pub fn mtu(&self, name: &str) -> Option<u16> {
        self.mtus
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, m)| *m)
    }

    /// The rewritten domain. Checked to parse again, so a caller never ships broken XML.
    pub fn apply(mut self) -> Result<String, DomainError> {
        // Stable: insertions at the same offset keep the order they were planned in.
        self.splices.sort_by_key(|(r, _)| r.start);
        let mut out = String::with_capacity(self.xml.len() + 512);
        let mut pos = 0;
        for (range, text) in &self.splices {
            out.push_str(&self.xml[pos..range.start]);
            out.push_str(text);
            pos = range.end;
        }
        out.push_str(&self.xml[pos..]);
        Document::parse(&out).map_err(|e| DomainError::Broken(e.to_string()))?;
        Ok(out)
    }
}

/// Plans the rewrite of `xml` for `nics`. With no NICs the plan changes nothing.
pub fn plan<'a>(xml: &'a str, nics: &[NicSpec]) -> Result<Plan<'a>, DomainError> {
    let doc = Document::parse(xml).map_err(|e| DomainError::Parse(e.to_string()))?;
    let mut plan = Plan {
        xml,
        splices: Vec::new(),
        mtus: Vec::new(),
    };
    if nics.is_empty() {
        return Ok(plan);
    }
    let root = doc.root_element();
    if !root.has_tag_name("domain") {
        return Err(DomainError::NoDomain);
    }
    let devices = child(root, "devices").ok_or(DomainError::NoDevices)?;
    let interfaces: Vec<Node> = devices
        .children()
        .filter(|n| n.has_tag_name("interface"))
        .collect();
    for nic in nics {
        let alias = format!("ua-{}", nic.name);
        let mine: Vec<Node> = interfaces
            .iter()
            .copied()
            .filter(|i| child(*i, "alias").and_then(|a| a.attribute("name")) == Some(&alias))
            .collect();
        match mine.as_slice() {
            [] => {
                plan.mtus.push((nic.name.clone(), None));
                let (at, text) = append_interface(xml, devices, &interfaces, nic)?;
                plan.splices.push((at..at, text));
            }
            [iface] => {
                plan.mtus
                    .push((nic.name.clone(), mtu_of(*iface, &nic.name)?));
                let text = rewrite_interface(xml, *iface, nic)?;
                plan.splices.push((iface.range(), text));
            }
            more => return Err(DomainError::DuplicateAlias(nic.name.clone(), more.len())),
        }
    }
    plan.splices.extend(memory_backing(xml, root)?);
    Ok(plan)
}

fn child<'a, 'i>(node: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    node.children().find(|n| n.has_tag_name(name))
}

fn mtu_of(iface: Node, name: &str) -> Result<Option<u16>, DomainError> {
    let Some(size) = child(iface, "mtu").and_then(|m| m.attribute("size")) else {
        return Ok(None);
    };
    size.parse()
        .map(Some)
        .map_err(|_| DomainError::BadMtu(name.into(), size.into()))
}

/// Children of a rewritten interface that keep the guest's view of the NIC. Not `<mtu>`:
/// libvirt (11.3) refuses it on a vhost-user interface ("Cannot set interface MTU on '(null)'"),
/// so the MTU goes to podwire (`--mtu`), which offers it to the guest by DHCP.
const KEPT: &[&str] = &[
    "mac", "model", "address", "boot", "alias", "acpi", "rom", "link",
];

fn rewrite_interface(xml: &str, iface: Node, nic: &NicSpec) -> Result<String, DomainError> {
    if let Some(model) = child(iface, "model").and_then(|m| m.attribute("type")) {
        if !model.starts_with("virtio") {
            return Err(DomainError::NotVirtio(nic.name.clone(), model.into()));
        }
    }
    let mut pieces = vec![source_element(&nic.socket)];
    pieces.extend(
        iface
            .children()
            .filter(|c| c.is_element() && KEPT.contains(&c.tag_name().name()))
            .map(|c| xml[c.range()].to_owned()),
    );
    let layout = Layout::of(xml, iface);
    Ok(layout.element(r#"<interface type="vhostuser">"#, "</interface>", &pieces))
}

/// A new interface, the way virt-launcher's converter builds one from the VMI, inserted after
/// the last existing interface (or as the last device).
fn append_interface(
    xml: &str,
    devices: Node,
    interfaces: &[Node],
    nic: &NicSpec,
) -> Result<(usize, String), DomainError> {
    let model = match nic.model.as_deref() {
        None | Some("") | Some("virtio") if nic.virtio_transitional => "virtio-transitional",
        None | Some("") | Some("virtio") => "virtio-non-transitional",
        Some(other) => return Err(DomainError::NotVirtio(nic.name.clone(), other.into())),
    };
    let mut pieces = vec![source_element(&nic.socket)];
    if let Some(mac) = &nic.mac {
        pieces.push(format!(r#"<mac address="{}"></mac>"#, escape(mac)));
    }
    pieces.push(format!(r#"<model type="{model}"></model>"#));
    if let Some(pci) = &nic.pci_address {
        pieces.push(pci_address_element(&nic.name, pci)?);
    }
    if let Some(order) = nic.boot_order {
        pieces.push(format!(r#"<boot order="{order}"></boot>"#));
    }
    pieces.push(format!(
        r#"<alias name="ua-{}"></alias>"#,
        escape(&nic.name)
    ));
    if let Some(index) = nic.acpi_index.filter(|&i| i > 0) {
        pieces.push(format!(r#"<acpi index="{index}"></acpi>"#));
    }
    if nic.boot_order.is_none() {
        // As the converter does for a NIC that does not boot: no option ROM to load.
        pieces.push(r#"<rom enabled="no"></rom>"#.to_owned());
    }
    let anchor = interfaces
        .last()
        .copied()
        .or_else(|| devices.last_element_child());
    match anchor {
        Some(sibling) => {
            let layout = Layout::of(xml, sibling);
            let text = layout.element(r#"<interface type="vhostuser">"#, "</interface>", &pieces);
            Ok((sibling.range().end, format!("{}{text}", layout.before())))
        }
        // virt-launcher's <devices> always holds a console, controllers and disks.
        None => Err(DomainError::EmptyDevices),
    }
}

fn source_element(socket: &str) -> String {
    // reconnect: should podwire ever be restarted on the same socket, QEMU comes back to it.
    format!(
        r#"<source type="unix" path="{}" mode="client"><reconnect enabled="yes" timeout="1"></reconnect></source>"#,
        escape(socket)
    )
}

/// `DDDD:BB:SS.F` (as in a VMI's `pciAddress`) to libvirt's `<address type="pci">`.
pub(crate) fn pci_address_element(name: &str, pci: &str) -> Result<String, DomainError> {
    let bad = || DomainError::BadPciAddress(name.into(), pci.into());
    let (domain, rest) = pci.split_once(':').ok_or_else(bad)?;
    let (bus, rest) = rest.split_once(':').ok_or_else(bad)?;
    let (slot, function) = rest.split_once('.').ok_or_else(bad)?;
    let hex = |s: &str, len: usize, max: u32| {
        (s.len() == len)
            .then(|| u32::from_str_radix(s, 16).ok())
            .flatten()
            .filter(|&v| v <= max)
            .ok_or_else(bad)
    };
    let (d, b, s, f) = (
        hex(domain, 4, 0xffff)?,
        hex(bus, 2, 0xff)?,
        hex(slot, 2, 0x1f)?,
        hex(function, 1, 7)?,
    );
    Ok(format!(
        r#"<address type="pci" domain="0x{d:04x}" bus="0x{b:02x}" slot="0x{s:02x}" function="0x{f:x}"></address>"#
    ))
}

/// The `<memoryBacking>` splices vhost-user needs; none if the domain already has them.
fn memory_backing(xml: &str, root: Node) -> Result<Vec<(Range<usize>, String)>, DomainError> {
    const SOURCE: &str = r#"<source type="memfd"></source>"#;
    const ACCESS: &str = r#"<access mode="shared"></access>"#;
    let Some(mb) = child(root, "memoryBacking") else {
        let anchor = ["currentMemory", "memory"]
            .iter()
            .find_map(|n| child(root, n))
            .or_else(|| root.last_element_child());
        let Some(anchor) = anchor else {
            return Err(DomainError::NoDevices);
        };
        let layout = Layout::of(xml, anchor);
        let text = layout.element(
            "<memoryBacking>",
            "</memoryBacking>",
            &[SOURCE.to_owned(), ACCESS.to_owned()],
        );
        let at = anchor.range().end;
        return Ok(vec![(at..at, format!("{}{text}", layout.before()))]);
    };
    let mut missing = Vec::new();
    match child(mb, "source").map(|s| s.attribute("type").unwrap_or("")) {
        None => missing.push(SOURCE),
        Some("memfd" | "file") => {}
        Some(other) => return Err(DomainError::SourceNotShareable(other.into())),
    }
    match child(mb, "access").map(|a| a.attribute("mode").unwrap_or("")) {
        None => missing.push(ACCESS),
        Some("shared") => {}
        Some(other) => return Err(DomainError::AccessNotShared(other.into())),
    }
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    match mb.last_element_child() {
        Some(last) => {
            let layout = Layout::of(xml, last);
            let mut text = String::new();
            for m in missing {
                let _ = write!(text, "{}{m}", layout.before());
            }
            let at = last.range().end;
            Ok(vec![(at..at, text)])
        }
        None => {
            // `<memoryBacking/>` or `<memoryBacking></memoryBacking>`: nothing inside to keep,
            // its start tag's attributes (it has none in libvirt's schema) aside.
            let layout = Layout::of(xml, mb);
            let pieces: Vec<String> = missing.iter().map(|m| (*m).to_owned()).collect();
            Ok(vec![(
                mb.range(),
                layout.element("<memoryBacking>", "</memoryBacking>", &pieces),
            )])
        }
    }
}

/// Indentation copied from the document, so inserted elements look like their neighbours.
struct Layout {
    /// The indentation of the element's own line ("" in a one-line document).
    indent: String,
    /// One level of indentation.
    step: String,
    pretty: bool,
}

impl Layout {
    fn of(xml: &str, node: Node) -> Self {
        let start = node.range().start;
        let line_start = xml[..start].rfind('\n').map(|i| i + 1);
        let indent = line_start
            .map(|ls| &xml[ls..start])
            .filter(|s| s.chars().all(|c| c == ' ' || c == '\t'))
            .unwrap_or("");
        let pretty = line_start.is_some() && xml[..start].ends_with(indent);
        let step = detect_step(xml, node).unwrap_or_else(|| "  ".to_owned());
        Self {
            indent: indent.to_owned(),
            step,
            pretty,
        }
    }

    /// What goes before a new sibling of this node.
    fn before(&self) -> String {
        if self.pretty {
            format!("\n{}", self.indent)
        } else {
            String::new()
        }
    }

    /// `open`, each piece on its own line one level deeper, `close` at this level.
    fn element(&self, open: &str, close: &str, pieces: &[String]) -> String {
        let mut out = open.to_owned();
        for p in pieces {
            if self.pretty {
                let _ = write!(out, "\n{}{}", self.indent, self.step);
            }
            out.push_str(p);
        }
        if self.pretty {
            let _ = write!(out, "\n{}", self.indent);
        }
        out.push_str(close);
        out
    }
}

/// The document's indentation step: the difference between an element's indentation and its
/// first element child's.
fn detect_step(xml: &str, node: Node) -> Option<String> {
    let indent_of = |n: Node| {
        let start = n.range().start;
        let ls = xml[..start].rfind('\n')? + 1;
        let s = &xml[ls..start];
        s.chars()
            .all(|c| c == ' ' || c == '\t')
            .then(|| s.to_owned())
    };
    for n in node.ancestors().filter(|n| n.is_element()) {
        if let (Some(outer), Some(inner)) =
            (indent_of(n), n.first_element_child().and_then(indent_of))
        {
            if let Some(step) = inner.strip_prefix(&outer).filter(|s| !s.is_empty()) {
                return Some(step.to_owned());
            }
        }
    }
    None
}

/// Escapes an attribute value for double quotes.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
#[path = "domain_tests.rs"]
mod tests;
