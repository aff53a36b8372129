//! Per-VM settings in the domain's own XML: ksm-balloon's element under
//! libvirt's `<metadata>`, parsed into [`VmSettings`] and checked against the
//! VM's sizes.
//!
//! The element (docs/METADATA.md has the schema and `virsh metadata`
//! examples):
//!
//! ```xml
//! <metadata>
//!   <ksm-balloon:vm xmlns:ksm-balloon="urn:ksm-balloon:metadata:1" manage="yes" weight="2">
//!     <ksm-balloon:floor unit="MiB">192</ksm-balloon:floor>
//!     <ksm-balloon:ceiling unit="GiB">1</ksm-balloon:ceiling>
//!   </ksm-balloon:vm>
//! </metadata>
//! ```
//!
//! Two stages, both pure: [`parse`] reads the text (a whole domain XML, or
//! the element alone as `virsh metadata` and `virDomainGetMetadata` print
//! it) and [`VmSettings::resolve`] checks the sizes against the VM's
//! `[currentMemory, memory]`. Neither ever fails: a value that is wrong is
//! reported as a [`Problem`] naming the element and the value, and that one
//! field keeps its default, so a typo in the metadata never stops a VM from
//! starting or from being managed. Elements of other applications (other
//! namespaces) are not looked at.

use std::fmt;

use roxmltree::{Document, Node};
use serde::{Deserialize, Serialize};

use crate::units::scaled_to_kib;
use crate::units::Kib;

/// ksm-balloon's XML namespace for this version of the element.
///
/// A URN and not an `http://` URI: an XML namespace is only a name, the
/// project owns no domain name to put in one, and a URN never invites anyone
/// to fetch it. The last field is the element's version: a change that old
/// readers would misread gets a new namespace (`...:2`), and an element in a
/// version this build does not know is reported, never half-read.
pub const NAMESPACE: &str = "urn:ksm-balloon:metadata:1";

/// Every version of the namespace starts with this.
pub const NAMESPACE_FAMILY: &str = "urn:ksm-balloon:metadata:";

/// The prefix the documentation uses (`virsh metadata --key`). Only the
/// namespace matters to the parser: any prefix, or a default namespace,
/// reads the same.
pub const PREFIX: &str = "ksm-balloon";

/// The element's local name.
pub const ELEMENT: &str = "vm";

/// The weight of a VM whose metadata names none.
pub const DEFAULT_WEIGHT: u32 = 1;

/// The largest weight taken. Far beyond any useful ratio, and small enough
/// that the sum of the weights of a million VMs times a pool in KiB cannot
/// overflow a `u128`, or lose a whole KiB in an `f64`, in the split.
pub const MAX_WEIGHT: u32 = 10_000;

/// The longest value quoted back in a [`Problem`].
const MAX_QUOTED: usize = 64;

/// What the metadata says, before it is checked against the VM's sizes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSettings {
    /// False: ksm-balloon never resizes this VM (`manage="no"`).
    #[serde(default = "yes")]
    pub manage: bool,
    /// Its weight in the split, as Proxmox's `shares`: a VM of weight 2
    /// gets twice the part of a VM of weight 1; 0 takes no part of the pool
    /// (it is still kept at or above its floor and within its ceiling).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// A floor above `<currentMemory>`, in KiB; `None`: `<currentMemory>`.
    #[serde(default)]
    pub floor_kib: Option<u64>,
    /// A ceiling below `<memory>`, in KiB; `None`: `<memory>`.
    #[serde(default)]
    pub ceiling_kib: Option<u64>,
}

fn yes() -> bool {
    true
}

fn default_weight() -> u32 {
    DEFAULT_WEIGHT
}

impl Default for VmSettings {
    fn default() -> Self {
        VmSettings {
            manage: true,
            weight: DEFAULT_WEIGHT,
            floor_kib: None,
            ceiling_kib: None,
        }
    }
}

/// One thing wrong in the metadata: which element or attribute, the value
/// found, and what was done instead.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// The element or attribute, as the operator wrote it relative to
    /// ksm-balloon's element: `vm/@weight`, `vm/floor`, `vm`.
    pub element: String,
    /// The value found (quoted, cut at 64 characters); empty when the
    /// problem is the element itself.
    pub value: String,
    /// What is wrong, and what is used instead.
    pub why: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ksm-balloon metadata {}", self.element)?;
        if !self.value.is_empty() {
            write!(f, " = {:?}", self.value)?;
        }
        write!(f, ": {}", self.why)
    }
}

fn problem(element: impl Into<String>, value: &str, why: impl Into<String>) -> Problem {
    let mut value: String = value.trim().chars().take(MAX_QUOTED + 1).collect();
    if value.chars().count() > MAX_QUOTED {
        value = value.chars().take(MAX_QUOTED).collect::<String>() + "...";
    }
    Problem {
        element: element.into(),
        value,
        why: why.into(),
    }
}

/// What [`parse`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    /// The settings: the defaults, with every valid value found applied.
    pub settings: VmSettings,
    /// Whether the document holds ksm-balloon's element at all.
    pub present: bool,
    /// Everything wrong, in document order.
    pub problems: Vec<Problem>,
}

/// Reads ksm-balloon's settings from XML text: a whole domain XML (as the
/// hook gets it on stdin, or `virDomainGetXMLDesc` returns it), or
/// ksm-balloon's element alone (as `virDomainGetMetadata` returns it).
///
/// Never fails: XML that cannot be read gives the defaults and a problem.
pub fn parse(xml: &str) -> Parsed {
    match Document::parse(xml) {
        Ok(doc) => from_node(doc.root_element()),
        Err(e) => Parsed {
            problems: vec![problem(
                "domain",
                "",
                format!("the XML cannot be read ({e}); the defaults are used"),
            )],
            ..Parsed::default()
        },
    }
}

/// Reads ksm-balloon's settings from the text `virDomainGetMetadata(...,
/// VIR_DOMAIN_METADATA_ELEMENT, "urn:ksm-balloon:metadata:1", ...)` returns
/// (and `virsh metadata VM --uri ...` prints): ksm-balloon's element with
/// its namespace taken off (`<vm weight="2"><floor>...`, seen on libvirt
/// 9.0). The caller asked for our namespace, so the root element is ours
/// whatever its namespace says; its children count in no namespace or in
/// ours.
pub fn parse_element(xml: &str) -> Parsed {
    let doc = match Document::parse(xml) {
        Ok(doc) => doc,
        Err(e) => {
            return Parsed {
                problems: vec![problem(
                    ELEMENT,
                    "",
                    format!("the metadata cannot be read ({e}); the defaults are used"),
                )],
                ..Parsed::default()
            }
        }
    };
    let root = doc.root_element();
    if root.tag_name().name() != ELEMENT {
        return Parsed {
            problems: vec![problem(
                root.tag_name().name(),
                "",
                format!("not <{ELEMENT}>; the defaults are used"),
            )],
            ..Parsed::default()
        };
    }
    from_element(root, root.tag_name().namespace())
}

/// Reads ksm-balloon's settings from a parsed `<domain>` element, or from
/// ksm-balloon's element itself.
pub fn from_node(node: Node) -> Parsed {
    if is_ours(node) {
        return from_element(node, Some(NAMESPACE));
    }
    let mut out = Parsed::default();
    if node.tag_name().name() != "domain" || node.tag_name().namespace().is_some() {
        out.problems.push(problem(
            node.tag_name().name(),
            "",
            "neither a <domain> nor ksm-balloon's element; the defaults are used",
        ));
        return out;
    }
    // libvirt keeps one <metadata>, and in it one element per namespace (it
    // drops later duplicates when a domain is defined). Only the direct
    // children of the domain's own <metadata> count.
    let Some(metadata) = node.children().find(|n| {
        n.is_element() && n.tag_name().name() == "metadata" && n.tag_name().namespace().is_none()
    }) else {
        return out;
    };
    let mut found: Option<Node> = None;
    let mut extra = 0;
    for el in metadata.children().filter(|n| n.is_element()) {
        let ns = el.tag_name().namespace().unwrap_or("");
        if is_ours(el) {
            if found.is_none() {
                found = Some(el);
            } else {
                extra += 1;
            }
        } else if ns == NAMESPACE {
            out.problems.push(problem(
                el.tag_name().name(),
                "",
                format!("not an element of {NAMESPACE} (its one element is <{ELEMENT}>); ignored"),
            ));
        } else if ns.starts_with(NAMESPACE_FAMILY) {
            out.problems.push(problem(
                format!("{{{ns}}}{}", el.tag_name().name()),
                "",
                format!(
                    "written for a version of ksm-balloon's metadata this build does not read (it reads {NAMESPACE}); ignored"
                ),
            ));
        }
    }
    if let Some(el) = found {
        let mut parsed = from_element(el, Some(NAMESPACE));
        if extra > 0 {
            // libvirt itself would only ever show the first one.
            parsed.problems.insert(
                0,
                problem(
                    ELEMENT,
                    "",
                    format!(
                        "{} more <{ELEMENT}> element(s) in {NAMESPACE}: only the first is read",
                        extra
                    ),
                ),
            );
        }
        parsed.problems.splice(0..0, out.problems);
        return parsed;
    }
    out
}

fn is_ours(node: Node) -> bool {
    node.is_element()
        && node.tag_name().namespace() == Some(NAMESPACE)
        && node.tag_name().name() == ELEMENT
}

/// `yes`/`no`, as libvirt writes its own switches.
fn parse_manage(text: &str) -> Result<bool, String> {
    match text.trim() {
        "yes" => Ok(true),
        "no" => Ok(false),
        _ => Err("must be yes or no; yes is used".into()),
    }
}

fn parse_weight(text: &str) -> Result<u32, String> {
    let t = text.trim();
    let bad = || format!("must be a whole number from 0 to {MAX_WEIGHT}; {DEFAULT_WEIGHT} is used");
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match t.parse::<u64>() {
        Ok(w) if w <= u64::from(MAX_WEIGHT) => Ok(w as u32),
        _ => Err(bad()),
    }
}

fn parse_size(el: Node) -> Result<u64, String> {
    let text = el.text().unwrap_or("").trim();
    let unit = el.attribute("unit");
    scaled_to_kib(text, unit).map_err(|why| {
        let why = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) && why.starts_with("not a whole") {
            "too large".to_string()
        } else {
            why
        };
        format!("{why} (a whole number with an optional unit attribute, as libvirt's <memory>); ignored")
    })
}

fn from_element(el: Node, ns: Option<&str>) -> Parsed {
    let mut out = Parsed {
        present: true,
        ..Parsed::default()
    };
    for a in el.attributes() {
        if a.namespace().is_some() {
            continue;
        }
        let at = format!("{ELEMENT}/@{}", a.name());
        match a.name() {
            "manage" => match parse_manage(a.value()) {
                Ok(v) => out.settings.manage = v,
                Err(why) => out.problems.push(problem(at, a.value(), why)),
            },
            "weight" => match parse_weight(a.value()) {
                Ok(v) => out.settings.weight = v,
                Err(why) => out.problems.push(problem(at, a.value(), why)),
            },
            _ => out.problems.push(problem(
                at,
                a.value(),
                "unknown attribute (manage and weight are known); ignored",
            )),
        }
    }
    let mut seen_floor = 0;
    let mut seen_ceiling = 0;
    for c in el.children().filter(|n| n.is_element()) {
        // Elements of other namespaces inside ours belong to someone else.
        if c.tag_name().namespace() != ns {
            continue;
        }
        let name = c.tag_name().name();
        let at = format!("{ELEMENT}/{name}");
        let value = size_text(c);
        match name {
            "floor" | "ceiling" => {
                let (seen, slot) = if name == "floor" {
                    (&mut seen_floor, &mut out.settings.floor_kib)
                } else {
                    (&mut seen_ceiling, &mut out.settings.ceiling_kib)
                };
                *seen += 1;
                if *seen > 1 {
                    continue;
                }
                match parse_size(c) {
                    Ok(kib) => *slot = Some(kib),
                    Err(why) => out.problems.push(problem(at, &value, why)),
                }
            }
            _ => out.problems.push(problem(
                at,
                &value,
                "unknown element (floor and ceiling are known); ignored",
            )),
        }
    }
    // Two floors (or two ceilings) say two different things: neither is
    // trusted rather than guessing which one the operator meant.
    for (name, seen, slot) in [
        ("floor", seen_floor, &mut out.settings.floor_kib),
        ("ceiling", seen_ceiling, &mut out.settings.ceiling_kib),
    ] {
        if seen > 1 {
            *slot = None;
            out.problems.push(problem(
                format!("{ELEMENT}/{name}"),
                "",
                format!("appears {seen} times; all are ignored"),
            ));
        }
    }
    out
}

/// An element's value as written, with its unit, for quoting in a problem.
fn size_text(el: Node) -> String {
    let text = el.text().unwrap_or("").trim();
    match el.attribute("unit") {
        Some(u) => format!("{text} {u}"),
        None => text.to_string(),
    }
}

/// The VM's own sizes, which the metadata's floor and ceiling must lie
/// within. Take them from the XML of the VM's start (`prepare`/`start`) or
/// its persistent definition, or from its record: at `started` and in the
/// live XML, `<currentMemory>` is the balloon's size of the moment, not the
/// size the VM starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// `<currentMemory>` at start (the recorded floor), KiB.
    pub current_memory_kib: u64,
    /// `<memory>` (the recorded ceiling), KiB.
    pub memory_kib: u64,
}

/// The settings ksm-balloon applies to a VM, every size checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Effective {
    /// False: never resized.
    pub manage: bool,
    /// Weight in the split; 0 takes no part of the pool.
    pub weight: u32,
    /// Never shrunk below this, KiB.
    pub floor_kib: u64,
    /// Never grown past this, KiB.
    pub ceiling_kib: u64,
}

impl VmSettings {
    /// Checks the floor and ceiling against the VM's sizes. A floor or
    /// ceiling outside `[currentMemory, memory]` is reported and replaced by
    /// the bound; a floor above the ceiling makes both fall back to the
    /// bounds (which of the two is wrong cannot be told).
    pub fn resolve(&self, bounds: Bounds) -> (Effective, Vec<Problem>) {
        let lo = bounds.current_memory_kib;
        let hi = bounds.memory_kib.max(lo);
        let mut problems = Vec::new();
        let range = format!("[{}, {}] (<currentMemory>, <memory>)", Kib(lo), Kib(hi));
        let mut check = |name: &str, value: Option<u64>, fallback: u64| -> u64 {
            match value {
                None => fallback,
                Some(v) if (lo..=hi).contains(&v) => v,
                Some(v) => {
                    problems.push(problem(
                        format!("{ELEMENT}/{name}"),
                        &format!("{v} KiB"),
                        format!(
                            "{} is outside the VM's {range}; {} is used",
                            Kib(v),
                            Kib(fallback)
                        ),
                    ));
                    fallback
                }
            }
        };
        let mut floor = check("floor", self.floor_kib, lo);
        let mut ceiling = check("ceiling", self.ceiling_kib, hi);
        if floor > ceiling {
            problems.push(problem(
                format!("{ELEMENT}/floor"),
                &format!("{floor} KiB"),
                format!(
                    "the floor {} is above the ceiling {}; both are ignored ({} and {} are used)",
                    Kib(floor),
                    Kib(ceiling),
                    Kib(lo),
                    Kib(hi)
                ),
            ));
            floor = lo;
            ceiling = hi;
        }
        (
            Effective {
                manage: self.manage,
                weight: self.weight,
                floor_kib: floor,
                ceiling_kib: ceiling,
            },
            problems,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024;

    /// A domain as libvirt prints it, with `meta` inside `<metadata>`.
    fn domain(meta: &str) -> String {
        format!(
            "<domain type='qemu'>\n  <name>web1</name>\n  <uuid>13ce8962-88be-432d-9b75-3b3d27bb9461</uuid>\n  <metadata>\n    {meta}\n  </metadata>\n  <memory unit='KiB'>262144</memory>\n  <currentMemory unit='KiB'>163840</currentMemory>\n</domain>"
        )
    }

    fn ours(body: &str) -> String {
        domain(&format!(
            "<ksm-balloon:vm xmlns:ksm-balloon=\"{NAMESPACE}\" {body}"
        ))
    }

    const BOUNDS: Bounds = Bounds {
        current_memory_kib: 160 * MIB,
        memory_kib: 256 * MIB,
    };

    fn elements(p: &[Problem]) -> Vec<&str> {
        p.iter().map(|p| p.element.as_str()).collect()
    }

    #[test]
    fn valid_settings() {
        let p = parse(&ours(
            "manage=\"no\" weight=\"2\"><ksm-balloon:floor unit=\"MiB\">192</ksm-balloon:floor><ksm-balloon:ceiling unit=\"KiB\">245760</ksm-balloon:ceiling></ksm-balloon:vm>",
        ));
        assert!(p.present);
        assert_eq!(p.problems, vec![]);
        assert_eq!(
            p.settings,
            VmSettings {
                manage: false,
                weight: 2,
                floor_kib: Some(192 * MIB),
                ceiling_kib: Some(240 * MIB),
            }
        );
        let (eff, problems) = p.settings.resolve(BOUNDS);
        assert_eq!(problems, vec![]);
        assert_eq!(
            eff,
            Effective {
                manage: false,
                weight: 2,
                floor_kib: 192 * MIB,
                ceiling_kib: 240 * MIB
            }
        );
    }

    #[test]
    fn missing_metadata_gives_the_defaults() {
        let xml = "<domain><name>a</name><uuid>u</uuid><memory>1</memory></domain>";
        let p = parse(xml);
        assert!(!p.present);
        assert_eq!(p.problems, vec![]);
        assert_eq!(p.settings, VmSettings::default());
        // Our element without attributes or children: present, all defaults.
        let p = parse(&ours("/>"));
        assert!(p.present);
        assert_eq!((p.settings, p.problems), (VmSettings::default(), vec![]));
        let (eff, problems) = VmSettings::default().resolve(BOUNDS);
        assert_eq!(problems, vec![]);
        assert_eq!(
            eff,
            Effective {
                manage: true,
                weight: 1,
                floor_kib: 160 * MIB,
                ceiling_kib: 256 * MIB
            }
        );
        // An empty <metadata> and a domain with other applications only.
        assert_eq!(parse(&domain("")).settings, VmSettings::default());
    }

    #[test]
    fn the_element_alone_as_virsh_metadata_prints_it() {
        // `virsh metadata VM --uri ...` prints the element with no prefix in
        // a default namespace; virDomainGetMetadata returns the same.
        let p = parse(&format!(
            "<vm xmlns=\"{NAMESPACE}\" weight=\"3\">\n  <floor unit=\"MiB\">200</floor>\n</vm>"
        ));
        assert!(p.present);
        assert_eq!(p.problems, vec![]);
        assert_eq!(p.settings.weight, 3);
        assert_eq!(p.settings.floor_kib, Some(200 * MIB));
    }

    #[test]
    fn the_element_as_virdomaingetmetadata_returns_it() {
        // No namespace on it (libvirt takes it off).
        let p = parse_element("<vm manage=\"no\"><floor unit=\"MiB\">170</floor><x:floor xmlns:x=\"urn:x\">1</x:floor></vm>");
        assert_eq!(p.problems, vec![]);
        assert_eq!(
            p.settings,
            VmSettings {
                manage: false,
                floor_kib: Some(170 * MIB),
                ..VmSettings::default()
            }
        );
        // With its namespace on, the same.
        let p = parse_element(&format!("<vm xmlns=\"{NAMESPACE}\" weight=\"3\"/>"));
        assert_eq!((p.settings.weight, p.problems.len()), (3, 0));
        for bad in ["", "<vm", "<domain/>"] {
            let p = parse_element(bad);
            assert!(!p.present, "{bad:?}");
            assert_eq!(p.problems.len(), 1, "{bad:?}");
            assert_eq!(p.settings, VmSettings::default());
        }
    }

    #[test]
    fn any_prefix_or_a_default_namespace_reads_the_same() {
        for meta in [
            format!("<kb:vm xmlns:kb=\"{NAMESPACE}\" weight=\"4\"/>"),
            format!("<vm xmlns=\"{NAMESPACE}\" weight=\"4\"/>"),
            format!("<vm xmlns=\"{NAMESPACE}\" xmlns:ksm-balloon=\"{NAMESPACE}\" weight=\"4\"/>"),
        ] {
            let p = parse(&domain(&meta));
            assert_eq!(p.settings.weight, 4, "{meta}");
            assert!(p.problems.is_empty(), "{meta}: {:?}", p.problems);
        }
    }

    #[test]
    fn invalid_values_are_reported_and_fall_back_one_by_one() {
        let p = parse(&ours(
            "manage=\"maybe\" weight=\"two\"><ksm-balloon:floor unit=\"parsecs\">1</ksm-balloon:floor><ksm-balloon:ceiling unit=\"MiB\">200</ksm-balloon:ceiling></ksm-balloon:vm>",
        ));
        assert_eq!(
            elements(&p.problems),
            ["vm/@manage", "vm/@weight", "vm/floor"]
        );
        assert_eq!(p.problems[0].value, "maybe");
        assert_eq!(p.problems[1].value, "two");
        assert_eq!(p.problems[2].value, "1 parsecs");
        // Each bad field keeps its default; the good one is taken.
        assert_eq!(
            p.settings,
            VmSettings {
                ceiling_kib: Some(200 * MIB),
                ..VmSettings::default()
            }
        );
        assert_eq!(
            p.problems[1].to_string(),
            "ksm-balloon metadata vm/@weight = \"two\": must be a whole number from 0 to 10000; 1 is used"
        );
    }

    #[test]
    fn bad_sizes() {
        for (body, why) in [
            ("<ksm-balloon:floor>-1</ksm-balloon:floor>", "not a whole"),
            (
                "<ksm-balloon:floor unit='MiB'>1.5</ksm-balloon:floor>",
                "not a whole",
            ),
            ("<ksm-balloon:floor></ksm-balloon:floor>", "not a whole"),
            (
                "<ksm-balloon:floor unit='MiB'>99999999999999999999</ksm-balloon:floor>",
                "too large",
            ),
            (
                "<ksm-balloon:floor unit='EiB'>99999</ksm-balloon:floor>",
                "too large",
            ),
        ] {
            let p = parse(&ours(&format!(">{body}</ksm-balloon:vm>")));
            assert_eq!(p.settings.floor_kib, None, "{body}");
            assert_eq!(elements(&p.problems), ["vm/floor"], "{body}");
            assert!(
                p.problems[0].why.starts_with(why),
                "{body}: {}",
                p.problems[0].why
            );
        }
    }

    #[test]
    fn weights() {
        for (w, want) in [
            ("0", Some(0)),
            ("1", Some(1)),
            (" 7 ", Some(7)),
            ("10000", Some(10_000)),
            ("10001", None),
            ("99999999999999999999999", None),
            ("-1", None),
            ("1.5", None),
            ("+2", None),
            ("", None),
        ] {
            let p = parse(&ours(&format!("weight=\"{w}\"/>")));
            assert_eq!(
                p.problems.is_empty(),
                want.is_some(),
                "{w:?}: {:?}",
                p.problems
            );
            assert_eq!(p.settings.weight, want.unwrap_or(DEFAULT_WEIGHT), "{w:?}");
        }
    }

    #[test]
    fn manage_takes_yes_or_no_only() {
        for (m, want) in [
            ("yes", Some(true)),
            ("no", Some(false)),
            (" no ", Some(false)),
        ] {
            assert_eq!(
                parse(&ours(&format!("manage='{m}'/>"))).settings.manage,
                want.unwrap()
            );
        }
        for m in ["No", "false", "0", "off", ""] {
            let p = parse(&ours(&format!("manage='{m}'/>")));
            assert!(p.settings.manage, "{m:?}");
            assert_eq!(elements(&p.problems), ["vm/@manage"], "{m:?}");
        }
    }

    #[test]
    fn foreign_namespaces_are_ignored() {
        // Other applications' metadata, an element named like ours in
        // another namespace (what `virsh metadata --set '<x:vm xmlns:x=...>'`
        // leaves, seen on libvirt 9.0), and foreign children and attributes
        // inside ours.
        let meta = format!(
            "<x:vm xmlns:x=\"urn:other\" xmlns:ksm-balloon=\"{NAMESPACE}\" manage=\"no\" weight=\"4\"><x:floor>1</x:floor></x:vm>\
             <nova:instance xmlns:nova=\"http://openstack.org/xmlns/libvirt/nova/1.0\"><nova:memory>512</nova:memory></nova:instance>\
             <vm manage=\"no\"/>\
             <ksm-balloon:vm xmlns:ksm-balloon=\"{NAMESPACE}\" xmlns:y=\"urn:y\" y:weight=\"9\" weight=\"5\"><y:floor>1</y:floor><!-- note --></ksm-balloon:vm>"
        );
        let p = parse(&domain(&meta));
        assert_eq!(p.problems, vec![]);
        assert_eq!(
            p.settings,
            VmSettings {
                weight: 5,
                ..VmSettings::default()
            }
        );
        // Only foreign metadata: as if there were none.
        let p = parse(&domain("<x:vm xmlns:x=\"urn:other\" manage=\"no\"/>"));
        assert!(!p.present);
        assert!(p.settings.manage);
    }

    #[test]
    fn only_the_domains_own_metadata_counts() {
        // An element of ours somewhere else in the domain is not metadata.
        let xml = format!(
            "<domain><name>a</name><devices><metadata><vm xmlns=\"{NAMESPACE}\" manage=\"no\"/></metadata></devices></domain>"
        );
        let p = parse(&xml);
        assert!(!p.present);
        assert!(p.settings.manage);
    }

    #[test]
    fn other_versions_are_reported_not_read() {
        let p = parse(&domain(
            "<vm xmlns=\"urn:ksm-balloon:metadata:2\" manage=\"no\"/>",
        ));
        assert!(!p.present);
        assert!(p.settings.manage);
        assert_eq!(p.problems.len(), 1);
        assert!(
            p.problems[0].why.contains("does not read"),
            "{:?}",
            p.problems
        );
        // Another element name in our namespace is a mistake, reported.
        let p = parse(&domain(&format!(
            "<settings xmlns=\"{NAMESPACE}\" manage=\"no\"/>"
        )));
        assert!(!p.present);
        assert_eq!(elements(&p.problems), ["settings"]);
    }

    #[test]
    fn unknown_attributes_and_elements_are_reported() {
        let p = parse(&ours(
            "manage='yes' wieght='3'><ksm-balloon:flor>1</ksm-balloon:flor></ksm-balloon:vm>",
        ));
        assert_eq!(elements(&p.problems), ["vm/@wieght", "vm/flor"]);
        assert_eq!(p.settings, VmSettings::default());
    }

    #[test]
    fn duplicated_elements() {
        // Two floors: neither is trusted; the single ceiling is.
        let p = parse(&ours(
            "><ksm-balloon:floor unit='MiB'>170</ksm-balloon:floor><ksm-balloon:floor unit='MiB'>180</ksm-balloon:floor><ksm-balloon:ceiling unit='MiB'>250</ksm-balloon:ceiling></ksm-balloon:vm>",
        ));
        assert_eq!(p.settings.floor_kib, None);
        assert_eq!(p.settings.ceiling_kib, Some(250 * MIB));
        assert_eq!(elements(&p.problems), ["vm/floor"]);
        assert!(p.problems[0].why.contains("2 times"));
        // Two elements of ours in <metadata> (libvirt 9.0 keeps only the
        // first when a domain is defined): the first is read, as libvirt
        // would show it, and the rest reported.
        let meta = format!(
            "<a:vm xmlns:a=\"{NAMESPACE}\" weight=\"2\"/><b:vm xmlns:b=\"{NAMESPACE}\" weight=\"3\"/>"
        );
        let p = parse(&domain(&meta));
        assert_eq!(p.settings.weight, 2);
        assert_eq!(elements(&p.problems), ["vm"]);
    }

    #[test]
    fn floor_and_ceiling_outside_the_bounds() {
        for (floor, ceiling, want_floor, want_ceiling, problems) in [
            // inside, at the edges
            (Some(160), Some(256), 160, 256, vec![]),
            (Some(200), Some(200), 200, 200, vec![]),
            // floor below <currentMemory>: the VM could be shrunk below
            // what it was started with
            (Some(100), None, 160, 256, vec!["vm/floor"]),
            (Some(0), None, 160, 256, vec!["vm/floor"]),
            // floor above <memory>
            (Some(300), None, 160, 256, vec!["vm/floor"]),
            // ceiling above <memory> (the balloon cannot grow past it) or
            // below <currentMemory>
            (None, Some(512), 160, 256, vec!["vm/ceiling"]),
            (None, Some(128), 160, 256, vec!["vm/ceiling"]),
            // each inside, but crossed: both ignored
            (Some(240), Some(200), 160, 256, vec!["vm/floor"]),
        ] {
            let s = VmSettings {
                floor_kib: floor.map(|f| f * MIB),
                ceiling_kib: ceiling.map(|c| c * MIB),
                ..VmSettings::default()
            };
            let (eff, p) = s.resolve(BOUNDS);
            assert_eq!(
                (eff.floor_kib, eff.ceiling_kib),
                (want_floor * MIB, want_ceiling * MIB),
                "{floor:?} {ceiling:?}"
            );
            assert_eq!(elements(&p), problems, "{floor:?} {ceiling:?}");
            assert!(eff.floor_kib <= eff.ceiling_kib);
        }
    }

    #[test]
    fn resolve_never_leaves_the_bounds() {
        // Whatever the metadata says, the result lies in [currentMemory, memory].
        let sizes = [
            0,
            1,
            159 * MIB,
            160 * MIB,
            200 * MIB,
            256 * MIB,
            257 * MIB,
            u64::MAX,
        ];
        for f in sizes.iter().map(|&s| Some(s)).chain([None]) {
            for c in sizes.iter().map(|&s| Some(s)).chain([None]) {
                let s = VmSettings {
                    floor_kib: f,
                    ceiling_kib: c,
                    ..VmSettings::default()
                };
                let (e, _) = s.resolve(BOUNDS);
                assert!(
                    BOUNDS.current_memory_kib <= e.floor_kib
                        && e.floor_kib <= e.ceiling_kib
                        && e.ceiling_kib <= BOUNDS.memory_kib,
                    "{f:?} {c:?} -> {e:?}"
                );
            }
        }
    }

    #[test]
    fn unreadable_xml_is_a_problem_not_a_failure() {
        for xml in ["", "<domain>", "not xml", "<network/>"] {
            let p = parse(xml);
            assert_eq!(p.settings, VmSettings::default(), "{xml:?}");
            assert_eq!(p.problems.len(), 1, "{xml:?}");
        }
    }

    #[test]
    fn long_values_are_cut_when_quoted() {
        let long = "x".repeat(10_000);
        let p = parse(&ours(&format!("weight=\"{long}\"/>")));
        assert_eq!(p.problems[0].value.len(), MAX_QUOTED + 3);
    }

    #[test]
    fn settings_in_the_state_file_read_back_and_default() {
        let s = VmSettings {
            manage: false,
            weight: 3,
            floor_kib: Some(5),
            ceiling_kib: None,
        };
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<VmSettings>(&json).unwrap(), s);
        assert_eq!(
            serde_json::from_str::<VmSettings>("{}").unwrap(),
            VmSettings::default()
        );
    }
}
