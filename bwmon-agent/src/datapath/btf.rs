//! Field offsets of kernel structs, read from the running kernel's BTF.
//!
//! Rust eBPF programs get no CO-RE relocations, and the layout of `sk_buff` or `net_device`
//! differs between kernel builds: the agent looks the offsets up here at load time and hands
//! them to the programs as read-only globals. Only what that needs is parsed: type headers,
//! struct/union members, and the string table.

use std::{borrow::Cow, path::Path};

use bwmon_common::KernelOffsets;

/// Where the running kernel publishes its BTF.
pub(crate) const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// What went wrong reading BTF, and where.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// The file could not be read.
    #[error("reading kernel BTF {path}")]
    Read {
        /// The file.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The data is not BTF as this parser knows it.
    #[error("malformed BTF: {0}")]
    Malformed(String),
    /// A struct or one of its fields is not in this kernel's BTF.
    #[error("kernel BTF has no {0}")]
    Missing(String),
}

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Clone, Copy, Debug)]
struct Member {
    name_off: u32,
    type_id: u32,
    /// Offset in bits from the start of the enclosing struct.
    bit_offset: u32,
}

#[derive(Clone, Debug)]
struct Type {
    name_off: u32,
    kind: u32,
    /// Size for structs/unions/ints, referenced type for pointers, typedefs and modifiers.
    size_or_type: u32,
    members: Vec<Member>,
    /// Enumerators (name offset, value) of enums.
    enumerators: Vec<(u32, i64)>,
}

/// Parsed kernel BTF: types and strings.
#[derive(Debug)]
pub(crate) struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| BtfError::Malformed(format!("truncated at byte {at}")))
}

impl Btf {
    /// Reads and parses the running kernel's BTF.
    ///
    /// # Errors
    /// The file cannot be read or is not BTF.
    pub(crate) fn from_kernel() -> Result<Self, BtfError> {
        Self::from_file(Path::new(VMLINUX))
    }

    /// Reads and parses a BTF file.
    ///
    /// # Errors
    /// The file cannot be read or is not BTF.
    pub(crate) fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&data)
    }

    /// Parses little-endian BTF (the header, the type section and the string section).
    ///
    /// # Errors
    /// The data is truncated, has a wrong magic, or holds a type kind this parser does not know.
    pub(crate) fn parse(data: &[u8]) -> Result<Self, BtfError> {
        if data.get(0..2) != Some(&[0x9f, 0xeb]) {
            return Err(BtfError::Malformed(
                "bad magic (not little-endian BTF)".into(),
            ));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let section = |off: usize, len: usize, what: &str| {
            hdr_len
                .checked_add(off)
                .and_then(|start| Some((start, start.checked_add(len)?)))
                .and_then(|(start, end)| data.get(start..end))
                .ok_or_else(|| BtfError::Malformed(format!("{what} section out of bounds")))
        };
        let types_data = section(type_off, type_len, "type")?;
        let strings = section(str_off, str_len, "string")?.to_vec();

        // Type id 0 is `void`.
        let mut types = vec![Type {
            name_off: 0,
            kind: 0,
            size_or_type: 0,
            members: Vec::new(),
            enumerators: Vec::new(),
        }];
        let mut at = 0usize;
        while at < types_data.len() {
            let name_off = u32_at(types_data, at)?;
            let info = u32_at(types_data, at + 4)?;
            let size_or_type = u32_at(types_data, at + 8)?;
            at += 12;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 == 1;
            let mut members = Vec::new();
            let mut enumerators = Vec::new();
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = at + i * 12;
                        let raw = u32_at(types_data, m + 8)?;
                        members.push(Member {
                            name_off: u32_at(types_data, m)?,
                            type_id: u32_at(types_data, m + 4)?,
                            bit_offset: if kind_flag { raw & 0x00ff_ffff } else { raw },
                        });
                    }
                    vlen * 12
                }
                KIND_ENUM => {
                    for i in 0..vlen {
                        let e = at + i * 8;
                        let value = u32_at(types_data, e + 4)? as i32;
                        enumerators.push((u32_at(types_data, e)?, i64::from(value)));
                    }
                    vlen * 8
                }
                KIND_ENUM64 => {
                    for i in 0..vlen {
                        let e = at + i * 12;
                        let lo = u64::from(u32_at(types_data, e + 4)?);
                        let hi = u64::from(u32_at(types_data, e + 8)?);
                        enumerators.push((u32_at(types_data, e)?, (hi << 32 | lo) as i64));
                    }
                    vlen * 12
                }
                KIND_FUNC_PROTO => vlen * 8,
                KIND_DATASEC => vlen * 12,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
                other => {
                    return Err(BtfError::Malformed(format!(
                        "unknown type kind {other} for type {}",
                        types.len()
                    )));
                }
            };
            at += extra;
            types.push(Type {
                name_off,
                kind,
                size_or_type,
                members,
                enumerators,
            });
        }
        Ok(Self { types, strings })
    }

    fn name(&self, off: u32) -> Cow<'_, str> {
        let start = off as usize;
        let bytes = self.strings.get(start..).unwrap_or_default();
        let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
        String::from_utf8_lossy(&bytes[..end])
    }

    fn struct_id(&self, name: &str) -> Result<u32, BtfError> {
        self.types
            .iter()
            .position(|t| t.kind == KIND_STRUCT && self.name(t.name_off) == name)
            .map(|i| i as u32)
            .ok_or_else(|| BtfError::Missing(format!("struct {name}")))
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let t = self.types.get(id as usize)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type;
                }
                _ => return Some(t),
            }
        }
        None
    }

    /// Bit offset and type of `field` inside the struct/union `ty`, looking through anonymous
    /// members (the kernel nests many fields in unnamed unions and `struct_group`s).
    fn find_member(&self, ty: &Type, field: &str) -> Option<(u32, u32)> {
        for m in &ty.members {
            if m.name_off != 0 && self.name(m.name_off) == field {
                return Some((m.bit_offset, m.type_id));
            }
        }
        for m in ty.members.iter().filter(|m| m.name_off == 0) {
            let inner = self.resolve(m.type_id)?;
            if matches!(inner.kind, KIND_STRUCT | KIND_UNION)
                && let Some((off, id)) = self.find_member(inner, field)
            {
                return Some((m.bit_offset + off, id));
            }
        }
        None
    }

    /// Byte offset of `path` (a field, or nested fields of embedded structs) in `struct name`.
    ///
    /// # Errors
    /// The struct or a field is missing, or a field is not byte-aligned.
    pub(crate) fn offset_of(&self, name: &str, path: &[&str]) -> Result<u32, BtfError> {
        let missing = || BtfError::Missing(format!("{name}.{}", path.join(".")));
        let mut ty = &self.types[self.struct_id(name)? as usize];
        let mut bits = 0u32;
        for (i, field) in path.iter().enumerate() {
            let (off, type_id) = self.find_member(ty, field).ok_or_else(missing)?;
            bits += off;
            if i + 1 < path.len() {
                ty = self.resolve(type_id).ok_or_else(missing)?;
            }
        }
        if !bits.is_multiple_of(8) {
            return Err(BtfError::Malformed(format!(
                "{name}.{} is a bitfield",
                path.join(".")
            )));
        }
        Ok(bits / 8)
    }

    /// The enumerators of `enum name`, as (name, value).
    ///
    /// # Errors
    /// No such enum.
    pub(crate) fn enum_values(&self, name: &str) -> Result<Vec<(String, i64)>, BtfError> {
        let t = self
            .types
            .iter()
            .find(|t| matches!(t.kind, KIND_ENUM | KIND_ENUM64) && self.name(t.name_off) == name)
            .ok_or_else(|| BtfError::Missing(format!("enum {name}")))?;
        Ok(t.enumerators
            .iter()
            .map(|(off, v)| (self.name(*off).into_owned(), *v))
            .collect())
    }

    /// Bitmap of the `skb_drop_reason` values that mean the packet never left through the
    /// qdisc: the qdisc's own drops (`QDISC_*`) and drops by tc programs on egress (`TC_*`,
    /// except `TC_INGRESS`).
    ///
    /// # Errors
    /// The kernel has no `enum skb_drop_reason`, or none of those reasons.
    pub(crate) fn qdisc_drop_reasons(&self) -> Result<[u64; 4], BtfError> {
        let mut bits = [0u64; 4];
        let mut any = false;
        for (name, value) in self.enum_values("skb_drop_reason")? {
            let Some(reason) = name.strip_prefix("SKB_DROP_REASON_") else {
                continue;
            };
            let wanted = reason.starts_with("QDISC_")
                || (reason.starts_with("TC_") && reason != "TC_INGRESS");
            if wanted && (0..256).contains(&value) {
                bits[(value / 64) as usize] |= 1 << (value % 64);
                any = true;
            }
        }
        if !any {
            return Err(BtfError::Missing("skb_drop_reason QDISC_* values".into()));
        }
        Ok(bits)
    }

    /// The offsets the drop program needs.
    ///
    /// # Errors
    /// A field it needs is missing from this kernel.
    pub(crate) fn kernel_offsets(&self) -> Result<KernelOffsets, BtfError> {
        Ok(KernelOffsets {
            skb_dev: self.offset_of("sk_buff", &["dev"])?,
            skb_priority: self.offset_of("sk_buff", &["priority"])?,
            skb_pkt_len: self.offset_of("sk_buff", &["cb"])?
                + self.offset_of("qdisc_skb_cb", &["pkt_len"])?,
            dev_ifindex: self.offset_of("net_device", &["ifindex"])?,
            dev_net: self.offset_of("net_device", &["nd_net", "net"])?,
            net_inum: self.offset_of("net", &["ns", "inum"])?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a tiny BTF blob: `struct outer { int a; union { int b; struct { int c; }; }; }`.
    fn sample() -> Vec<u8> {
        let strings = b"\0int\0outer\0a\0b\0c\0".to_vec();
        // ids: 1 int, 2 anon struct {c}, 3 anon union {b, <2>}, 4 struct outer {a, <3>}
        let mut types = Vec::new();
        let mut push = |w: &[u32]| {
            w.iter()
                .for_each(|x| types.extend_from_slice(&x.to_le_bytes()))
        };
        push(&[1, KIND_INT << 24, 4, 32]);
        push(&[0, (KIND_STRUCT << 24) | 1, 4, 15, 1, 0]);
        push(&[0, (KIND_UNION << 24) | 2, 4, 13, 1, 0, 0, 2, 0]);
        push(&[5, (KIND_STRUCT << 24) | 2, 8, 11, 1, 0, 0, 3, 32]);
        let mut out = vec![0x9f, 0xeb, 1, 0];
        for w in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&types);
        out.extend_from_slice(&strings);
        out
    }

    #[test]
    fn fields_inside_anonymous_unions_and_structs_are_found() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.offset_of("outer", &["a"]).unwrap(), 0);
        assert_eq!(btf.offset_of("outer", &["b"]).unwrap(), 4);
        assert_eq!(btf.offset_of("outer", &["c"]).unwrap(), 4);
        let err = btf.offset_of("outer", &["d"]).unwrap_err();
        assert_eq!(err.to_string(), "kernel BTF has no outer.d");
        assert!(btf.offset_of("nope", &["a"]).is_err());
    }

    #[test]
    fn truncated_or_foreign_data_is_an_error_not_a_panic() {
        let data = sample();
        for cut in [0, 1, 3, 10, 23, 30, data.len() - 1] {
            assert!(Btf::parse(&data[..cut]).is_err(), "cut at {cut}");
        }
        assert!(Btf::parse(b"\x7fELF....................").is_err());
    }

    #[test]
    fn running_kernel_offsets_are_plausible() {
        if !Path::new(VMLINUX).exists() {
            return;
        }
        let o = Btf::from_kernel().unwrap().kernel_offsets().unwrap();
        // sk_buff is a few hundred bytes; each field lies inside it and they are distinct.
        for off in [o.skb_dev, o.skb_priority, o.skb_pkt_len] {
            assert!(off < 512, "{o:?}");
        }
        assert_ne!(o.skb_dev, o.skb_priority);
        assert_eq!(o.skb_dev % 8, 0, "a pointer is 8-aligned");
        let reasons = Btf::from_kernel().unwrap().qdisc_drop_reasons().unwrap();
        let names: Vec<(String, i64)> = Btf::from_kernel()
            .unwrap()
            .enum_values("skb_drop_reason")
            .unwrap();
        let qdisc_drop = names
            .iter()
            .find(|(n, _)| n == "SKB_DROP_REASON_QDISC_DROP")
            .unwrap()
            .1;
        assert_ne!(
            reasons[(qdisc_drop / 64) as usize] & (1 << (qdisc_drop % 64)),
            0
        );
    }
}
