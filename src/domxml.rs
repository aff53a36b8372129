//! Libvirt domain XML: the few facts ksm-balloon needs from it (name, UUID,
//! `<memory>`, `<currentMemory>`, whether a balloon device exists and
//! deflates on OOM, ksm-balloon's own metadata element), read with a real
//! XML parser.

use roxmltree::{Document, Node};

/// What ksm-balloon takes from a domain's XML. Sizes in KiB.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainXml {
    /// `<name>`.
    pub name: String,
    /// `<uuid>`, lower case.
    pub uuid: String,
    /// `<memory>`: the boot-time maximum (the ceiling).
    pub memory_kib: u64,
    /// `<currentMemory>`: the size it starts at (the floor); `<memory>` when absent.
    pub current_memory_kib: u64,
    /// False only for `<memballoon model='none'/>`.
    pub balloon: bool,
    /// `<memballoon autodeflate='on'>`: the balloon deflates on guest OOM.
    pub autodeflate: bool,
    /// ksm-balloon's metadata element (settings and problems).
    pub metadata: crate::metadata::Parsed,
}

/// Why domain XML was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum XmlError {
    /// No XML at all.
    #[error("the domain XML is empty")]
    Empty,
    /// Not well-formed.
    #[error("the domain XML is not well-formed")]
    Malformed(#[source] roxmltree::Error),
    /// Well-formed but not a domain.
    #[error("the XML's root element is <{0}>, not <domain>")]
    NotADomain(String),
    /// A required element is missing or empty.
    #[error("the domain XML has no <{0}> element")]
    Missing(&'static str),
    /// A size that is not a size.
    #[error("<{element}> holds {value:?} with unit {unit:?}: {why}")]
    BadSize {
        /// The element.
        element: &'static str,
        /// Its text.
        value: String,
        /// Its unit attribute.
        unit: String,
        /// What is wrong.
        why: String,
    },
}

pub use crate::units::scaled_to_kib;

fn child<'a, 'i>(node: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    node.children()
        .find(|n| n.is_element() && n.tag_name().name() == name)
}

fn size(root: Node, element: &'static str) -> Result<Option<u64>, XmlError> {
    let Some(n) = child(root, element) else {
        return Ok(None);
    };
    let value = n.text().unwrap_or("").to_string();
    let unit = n.attribute("unit");
    scaled_to_kib(&value, unit)
        .map(Some)
        .map_err(|why| XmlError::BadSize {
            element,
            value: value.trim().chars().take(40).collect(),
            unit: unit.unwrap_or("").chars().take(20).collect(),
            why,
        })
}

/// Parses a domain's XML.
pub fn parse(xml: &str) -> Result<DomainXml, XmlError> {
    if xml.trim().is_empty() {
        return Err(XmlError::Empty);
    }
    let doc = Document::parse(xml).map_err(XmlError::Malformed)?;
    let root = doc.root_element();
    if root.tag_name().name() != "domain" {
        return Err(XmlError::NotADomain(
            root.tag_name().name().chars().take(40).collect(),
        ));
    }
    let text = |name: &'static str| -> Result<String, XmlError> {
        child(root, name)
            .and_then(|n| n.text())
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .ok_or(XmlError::Missing(name))
    };
    // libvirt keeps a name's leading and trailing spaces; so must we, or
    // the record would not match the domain's real name.
    let name = child(root, "name")
        .and_then(|n| n.text())
        .filter(|t| !t.trim().is_empty())
        .map(str::to_string)
        .ok_or(XmlError::Missing("name"))?;
    let uuid = text("uuid")?.to_ascii_lowercase();
    let memory_kib = size(root, "memory")?.ok_or(XmlError::Missing("memory"))?;
    let current_memory_kib = size(root, "currentMemory")?.unwrap_or(memory_kib);
    let balloon = child(root, "devices")
        .and_then(|d| child(d, "memballoon"))
        .and_then(|b| b.attribute("model"))
        .map(|m| m != "none")
        // libvirt adds a virtio balloon to qemu domains that do not name one.
        .unwrap_or(true);
    Ok(DomainXml {
        name,
        uuid,
        memory_kib,
        current_memory_kib,
        balloon,
        autodeflate: crate::manual::balloon_autodeflate(root),
        metadata: crate::metadata::from_node(root),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const XML: &str = r#"<domain type='qemu' id='3'>
  <name>guest1</name>
  <uuid>6695EB01-F6A4-8304-79AA-97F2502E193F</uuid>
  <memory unit='KiB'>262144</memory>
  <currentMemory unit='KiB'>163840</currentMemory>
  <vcpu placement='static'>1</vcpu>
  <numatune><memory mode='strict' nodeset='0'/></numatune>
  <devices>
    <memballoon model='virtio'><stats period='2'/></memballoon>
  </devices>
</domain>"#;

    #[test]
    fn real_domain() {
        assert_eq!(
            parse(XML),
            Ok(DomainXml {
                name: "guest1".into(),
                uuid: "6695eb01-f6a4-8304-79aa-97f2502e193f".into(),
                memory_kib: 262144,
                current_memory_kib: 163840,
                balloon: true,
                autodeflate: false,
                metadata: crate::metadata::Parsed::default(),
            })
        );
    }

    #[test]
    fn no_balloon() {
        let xml = XML.replace(
            "<memballoon model='virtio'><stats period='2'/></memballoon>",
            "<memballoon model='none'/>",
        );
        assert!(!parse(&xml).unwrap().balloon);
    }

    #[test]
    fn units() {
        for (v, u, kib) in [
            ("1", Some("GiB"), 1 << 20),
            ("1", Some("G"), 1 << 20),
            ("256", Some("MiB"), 256 * 1024),
            ("1", Some("MB"), 977),
            ("268435456", Some("b"), 262144),
            ("1", Some("bytes"), 1),
            ("1000", None, 1000),
            ("2", Some("k"), 2),
        ] {
            assert_eq!(scaled_to_kib(v, u), Ok(kib), "{v} {u:?}");
        }
        assert!(scaled_to_kib("1", Some("parsecs")).is_err());
        assert!(scaled_to_kib("-1", None).is_err());
        assert!(scaled_to_kib("1.5", Some("GiB")).is_err());
        assert!(scaled_to_kib("99999999999999", Some("EiB")).is_err());
    }

    #[test]
    fn bad_xml() {
        assert_eq!(parse(""), Err(XmlError::Empty));
        assert!(matches!(parse("<domain>"), Err(XmlError::Malformed(_))));
        assert_eq!(
            parse("<network/>"),
            Err(XmlError::NotADomain("network".into()))
        );
        assert_eq!(
            parse("<domain><name>a</name><uuid>u</uuid></domain>"),
            Err(XmlError::Missing("memory"))
        );
        assert_eq!(
            parse("<domain><uuid>u</uuid><memory>1</memory></domain>"),
            Err(XmlError::Missing("name"))
        );
        assert!(matches!(
            parse("<domain><name>a</name><uuid>u</uuid><memory unit='furlong'>1</memory></domain>"),
            Err(XmlError::BadSize {
                element: "memory",
                ..
            })
        ));
    }

    #[test]
    fn names_keep_their_leading_and_trailing_spaces() {
        // Found by tests/names.rs: the hook recorded "  web  " as "web",
        // which is not the name libvirt knows the domain by.
        let d = parse("<domain><name>  web 1  </name><uuid> u </uuid><memory>1</memory></domain>")
            .unwrap();
        assert_eq!(d.name, "  web 1  ");
        assert_eq!(d.uuid, "u");
        assert_eq!(
            parse("<domain><name>  </name><uuid>u</uuid><memory>1</memory></domain>"),
            Err(XmlError::Missing("name"))
        );
    }

    #[test]
    fn current_defaults_to_memory() {
        let d =
            parse("<domain><name>a</name><uuid>u</uuid><memory unit='MiB'>64</memory></domain>")
                .unwrap();
        assert_eq!(d.current_memory_kib, 65536);
    }

    #[test]
    fn nested_memory_elements_are_not_the_domains() {
        // <numatune><memory/> must not be taken for the domain's <memory>.
        let d = parse(XML).unwrap();
        assert_eq!(d.memory_kib, 262144);
    }
}
