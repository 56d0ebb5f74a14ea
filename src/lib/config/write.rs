//! The `cluster.conf` writer: the real tool's bytes.
//!
//! ocfs2-tools keeps stanza kinds and the keys of each stanza in GLib hash
//! tables and writes them in bucket order, so the order in the file is a
//! function of the names and of the order they were inserted in. We model
//! that table ([`glib_order`]) rather than hard-coding its results: the store
//! inserts clusters first, then, cluster by cluster, its heartbeat regions and
//! its nodes; each stanza's keys in the order the real store sets them.

use std::io::Write as _;

use super::{Cluster, ClusterConf};

/// GLib's `g_str_hash` (djb2 over the bytes, 32-bit).
fn g_str_hash(s: &str) -> u32 {
    s.bytes().fold(5381u32, |h, b| {
        h.wrapping_mul(33).wrapping_add(u32::from(b))
    })
}

/// The iteration order of a fresh GLib `GHashTable` (8 buckets, modulus 7,
/// quadratic probing) after inserting `keys` in the given order. Returns
/// indices into `keys`. Valid while fewer than 8 keys are inserted, which is
/// all the writer ever needs (the table would grow at 8).
fn glib_order(keys: &[&str]) -> Vec<usize> {
    const SIZE: usize = 8;
    assert!(keys.len() < SIZE, "the modelled table never grows");
    let mut buckets: [Option<usize>; SIZE] = [None; SIZE];
    for (i, k) in keys.iter().enumerate() {
        let mut idx = (g_str_hash(k).wrapping_mul(11) % 7) as usize;
        let mut step = 0;
        while buckets[idx].is_some() {
            step += 1;
            idx = (idx + step) & (SIZE - 1);
        }
        buckets[idx] = Some(i);
    }
    buckets.into_iter().flatten().collect()
}

/// One stanza as the store builds it: its kind and its keys in insertion order.
struct OutStanza<'a> {
    kind: &'static str,
    attrs: Vec<(&'static str, std::borrow::Cow<'a, str>)>,
}

fn cluster_stanza(c: &Cluster) -> OutStanza<'_> {
    OutStanza {
        kind: "cluster",
        attrs: vec![
            ("name", c.name.as_str().into()),
            ("heartbeat_mode", c.heartbeat_mode.as_str().into()),
            ("node_count", c.node_count.to_string().into()),
        ],
    }
}

impl ClusterConf {
    /// Serializes the configuration exactly as `o2cb` 1.8.7 writes it.
    /// An empty configuration is an empty file.
    pub fn to_bytes(&self) -> Vec<u8> {
        // The store walks clusters in order: cluster stanza, then its
        // heartbeat regions, then its nodes.
        let mut stanzas: Vec<OutStanza<'_>> = Vec::new();
        for c in &self.clusters {
            stanzas.push(cluster_stanza(c));
            for h in &c.heartbeats {
                stanzas.push(OutStanza {
                    kind: "heartbeat",
                    attrs: vec![
                        ("cluster", c.name.as_str().into()),
                        ("region", h.region.as_str().into()),
                    ],
                });
            }
            for n in &c.nodes {
                stanzas.push(OutStanza {
                    kind: "node",
                    attrs: vec![
                        ("cluster", c.name.as_str().into()),
                        ("name", n.name.as_str().into()),
                        ("ip_address", n.ip_address.to_string().into()),
                        ("ip_port", n.ip_port.to_string().into()),
                        ("number", n.number.to_string().into()),
                    ],
                });
            }
        }

        // Kinds in the order they were first created, then in table order.
        let mut kinds: Vec<&str> = Vec::new();
        for s in &stanzas {
            if !kinds.contains(&s.kind) {
                kinds.push(s.kind);
            }
        }
        let mut out = Vec::new();
        for k in glib_order(&kinds) {
            for s in stanzas.iter().filter(|s| s.kind == kinds[k]) {
                write_stanza(&mut out, s);
            }
        }
        out
    }
}

fn write_stanza(out: &mut Vec<u8>, s: &OutStanza<'_>) {
    let _ = writeln!(out, "{}:", s.kind);
    let keys: Vec<&str> = s.attrs.iter().map(|(k, _)| *k).collect();
    for i in glib_order(&keys) {
        let (key, value) = &s.attrs[i];
        if value.is_empty() {
            let _ = writeln!(out, "\t{key} =");
            continue;
        }
        // Embedded newlines are written as backslash-newline continuations.
        let mut lines = value.split('\n');
        let _ = write!(out, "\t{key} = {}", lines.next().unwrap_or(""));
        for l in lines {
            let _ = write!(out, "\\\n{l}");
        }
        out.push(b'\n');
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HeartbeatMode, parse};
    use std::net::Ipv4Addr;

    fn names(keys: &[&str]) -> Vec<String> {
        glib_order(keys)
            .into_iter()
            .map(|i| keys[i].to_owned())
            .collect()
    }

    #[test]
    fn glib_table_orders_match_the_real_files() {
        assert_eq!(
            names(&["name", "heartbeat_mode", "node_count"]),
            ["name", "heartbeat_mode", "node_count"]
        );
        assert_eq!(
            names(&["cluster", "name", "ip_address", "ip_port", "number"]),
            ["cluster", "number", "ip_port", "ip_address", "name"]
        );
        assert_eq!(names(&["cluster", "region"]), ["cluster", "region"]);
        // heartbeat and node share a bucket: the one created first keeps it.
        assert_eq!(
            names(&["cluster", "heartbeat", "node"]),
            ["cluster", "heartbeat", "node"]
        );
        assert_eq!(
            names(&["cluster", "node", "heartbeat"]),
            ["cluster", "node", "heartbeat"]
        );
    }

    #[test]
    fn empty_config_is_an_empty_file() {
        assert!(ClusterConf::default().to_bytes().is_empty());
    }

    #[test]
    fn canonical_layout() {
        let mut c = ClusterConf::default();
        c.add_cluster("c1").unwrap();
        c.add_node("c1", "n1", Ipv4Addr::new(10, 0, 0, 1), 7777, Some(1))
            .unwrap();
        c.add_heartbeat("c1", "0C7010EBE28F45CF9B64CB60642047A8")
            .unwrap();
        c.set_heartbeat_mode("c1", HeartbeatMode::Global).unwrap();
        let text = String::from_utf8(c.to_bytes()).unwrap();
        assert_eq!(
            text,
            "cluster:\n\tname = c1\n\theartbeat_mode = global\n\tnode_count = 1\n\n\
             heartbeat:\n\tcluster = c1\n\tregion = 0C7010EBE28F45CF9B64CB60642047A8\n\n\
             node:\n\tcluster = c1\n\tnumber = 1\n\tip_port = 7777\n\tip_address = 10.0.0.1\n\tname = n1\n\n"
        );
    }

    #[test]
    fn first_cluster_with_members_decides_kind_order() {
        let mut c = ClusterConf::default();
        c.add_cluster("c1").unwrap();
        c.add_cluster("c2").unwrap();
        c.add_node("c1", "n1", Ipv4Addr::LOCALHOST, 1, None)
            .unwrap();
        c.add_heartbeat("c2", "R").unwrap();
        let text = String::from_utf8(c.to_bytes()).unwrap();
        assert!(text.find("node:").unwrap() < text.find("heartbeat:").unwrap());
    }

    #[test]
    fn multiline_and_empty_values_round_trip() {
        let src = "cluster:\n\tname =\n\theartbeat_mode = local\n\tnode_count = 0\n\n\
                   node:\n\tcluster =\n\tnumber = 0\n\tip_port = 1\n\tip_address = 1.2.3.4\n\tname = a\\\nb\n\n";
        let c = parse(src.as_bytes()).unwrap();
        assert_eq!(c.clusters[0].nodes[0].name, "a\nb");
        assert_eq!(String::from_utf8(c.to_bytes()).unwrap(), src);
    }
}

#[cfg(test)]
mod props {
    use crate::config::{Cluster, ClusterConf, Heartbeat, HeartbeatMode, Node, parse};
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    /// Text the file format can carry: no NUL, not starting or ending with
    /// white space (the reader strips trailing blanks), no backslash right
    /// before a newline or at the end.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "([a-zA-Z0-9_#=:.é-][a-zA-Z0-9_ \t\n#=:.é\\-]{0,8})?[a-zA-Z0-9_#=:.é-]"
                .prop_filter("representable", |s| !s.contains("\\\n")),
        ]
    }

    fn node() -> impl Strategy<Value = Node> {
        (
            value().prop_filter("non-empty", |s| !s.is_empty()),
            0u32..i32::MAX as u32 - 1,
            any::<[u8; 4]>(),
            any::<u32>(),
        )
            .prop_map(|(name, number, ip, ip_port)| Node {
                name,
                number,
                ip_address: Ipv4Addr::from(ip),
                ip_port,
            })
    }

    fn cluster() -> impl Strategy<Value = Cluster> {
        (
            value(),
            any::<bool>(),
            any::<u32>(),
            proptest::collection::vec(node(), 0..4),
            proptest::collection::btree_set(
                value().prop_filter("non-empty", |s| !s.is_empty()),
                0..3,
            ),
        )
            .prop_map(|(name, global, node_count, nodes, regions)| {
                let mut c = Cluster::new(&name);
                c.heartbeat_mode = if global {
                    HeartbeatMode::Global
                } else {
                    HeartbeatMode::Local
                };
                c.node_count = node_count;
                for n in nodes {
                    if c.node(&n.name).is_none() {
                        c.nodes.push(n);
                    }
                }
                c.heartbeats = regions
                    .into_iter()
                    .map(|region| Heartbeat { region })
                    .collect();
                c
            })
    }

    fn conf() -> impl Strategy<Value = ClusterConf> {
        proptest::collection::vec(cluster(), 0..4).prop_map(|cs| {
            let mut conf = ClusterConf::default();
            for c in cs {
                if conf.cluster(&c.name).is_none() {
                    conf.clusters.push(c);
                }
            }
            conf
        })
    }

    /// Arbitrary bytes biased towards the format's own tokens.
    fn text() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            prop_oneof![
                Just(b"cluster:\n".to_vec()),
                Just(b"node:\n".to_vec()),
                Just(b"heartbeat:\n".to_vec()),
                Just(b"\tname = c1\n".to_vec()),
                Just(b"\tnode_count = 1\n".to_vec()),
                Just(b"\tcluster = c1\n".to_vec()),
                Just(b"\tnumber = 1\n".to_vec()),
                Just(b"\tip_address = 10.0.0.1\n".to_vec()),
                Just(b"\tip_port = 7777\n".to_vec()),
                Just(b"\tregion = R\n".to_vec()),
                Just(b"\theartbeat_mode = global\n".to_vec()),
                Just(b"\n".to_vec()),
                Just(b"\\".to_vec()),
                proptest::collection::vec(any::<u8>(), 0..4),
            ],
            0..24,
        )
        .prop_map(|v| v.concat())
    }

    proptest! {
        #[test]
        fn models_round_trip(c in conf()) {
            let bytes = c.to_bytes();
            prop_assert_eq!(parse(&bytes).unwrap(), c);
        }

        #[test]
        fn write_of_parse_is_stable(x in text()) {
            if let Ok(c1) = parse(&x) {
                let b1 = c1.to_bytes();
                let c2 = parse(&b1).expect("what we write parses");
                prop_assert_eq!(c2.to_bytes(), b1);
            }
        }
    }
}
