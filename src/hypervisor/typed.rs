//! libvirt's typed parameters (`virTypedParameter`), read into plain
//! numbers. The `virt` crate's `all_domain_stats` leaves a record's
//! parameters unread (and leaks the records), so the bulk call is made
//! through `virt::sys` and its parameters are read here: the field name
//! from the fixed-size array with [`CStr::from_bytes_until_nul`] (never
//! past its end, even if libvirt left no NUL), the value from the union
//! member its type names.

use std::collections::HashMap;
use std::ffi::CStr;

use virt::sys;

/// A parameter's name; `None` when the field holds no NUL or is not UTF-8.
pub fn name(p: &sys::virTypedParameter) -> Option<&str> {
    // SAFETY: `field` is a plain array of `c_char` (i8 or u8, one byte
    // each); viewing it as bytes of the same length is sound.
    let bytes: &[u8] =
        unsafe { std::slice::from_raw_parts(p.field.as_ptr().cast::<u8>(), p.field.len()) };
    CStr::from_bytes_until_nul(bytes).ok()?.to_str().ok()
}

/// A parameter's value as an unsigned integer; `None` for other types and
/// for negative values.
pub fn unsigned(p: &sys::virTypedParameter) -> Option<u64> {
    // SAFETY: the union member read is the one `type_` names; libvirt
    // writes that member (and tests build parameters the same way).
    unsafe {
        match u32::try_from(p.type_).ok()? {
            sys::VIR_TYPED_PARAM_INT => u64::try_from(p.value.i).ok(),
            sys::VIR_TYPED_PARAM_UINT => Some(u64::from(p.value.ui)),
            sys::VIR_TYPED_PARAM_LLONG => u64::try_from(p.value.l).ok(),
            sys::VIR_TYPED_PARAM_ULLONG => Some(p.value.ul),
            _ => None,
        }
    }
}

/// Every unsigned numeric parameter of `params`, by name.
pub fn numbers(params: &[sys::virTypedParameter]) -> HashMap<String, u64> {
    params
        .iter()
        .filter_map(|p| Some((name(p)?.to_string(), unsigned(p)?)))
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A parameter built the way libvirt fills one.
    pub(crate) fn param(field: &[u8], kind: u32, value: i128) -> sys::virTypedParameter {
        // SAFETY: an all-zero virTypedParameter is valid (a zeroed C struct).
        let mut p: sys::virTypedParameter = unsafe { std::mem::zeroed() };
        for (dst, &b) in p.field.iter_mut().zip(field) {
            *dst = b as _;
        }
        p.type_ = kind as i32;
        match kind {
            sys::VIR_TYPED_PARAM_INT => p.value.i = value as i32,
            sys::VIR_TYPED_PARAM_UINT => p.value.ui = value as u32,
            sys::VIR_TYPED_PARAM_LLONG => p.value.l = value as i64,
            sys::VIR_TYPED_PARAM_ULLONG => p.value.ul = value as u64,
            sys::VIR_TYPED_PARAM_DOUBLE => p.value.d = value as f64,
            _ => {}
        }
        p
    }

    #[test]
    fn reads_every_integer_type_and_skips_the_rest() {
        let params = [
            param(b"state.state", sys::VIR_TYPED_PARAM_INT, 1),
            param(b"balloon.current", sys::VIR_TYPED_PARAM_ULLONG, 163840),
            param(b"balloon.maximum", sys::VIR_TYPED_PARAM_UINT, 262144),
            param(
                b"balloon.last-update",
                sys::VIR_TYPED_PARAM_LLONG,
                1_800_000_000,
            ),
            param(b"cpu.time", sys::VIR_TYPED_PARAM_DOUBLE, 5),
            param(b"state.reason", sys::VIR_TYPED_PARAM_INT, -1),
        ];
        let n = numbers(&params);
        assert_eq!(n.get("state.state"), Some(&1));
        assert_eq!(n.get("balloon.current"), Some(&163840));
        assert_eq!(n.get("balloon.maximum"), Some(&262144));
        assert_eq!(n.get("balloon.last-update"), Some(&1_800_000_000));
        assert_eq!(n.get("cpu.time"), None, "a double is not read as a size");
        assert_eq!(n.get("state.reason"), None, "negative is not a size");
        assert_eq!(n.len(), 4);
    }

    #[test]
    fn a_name_filling_the_whole_field_without_a_nul_is_skipped_not_overread() {
        let full = [b'x'; 80];
        let p = param(&full, sys::VIR_TYPED_PARAM_ULLONG, 7);
        assert_eq!(name(&p), None);
        assert!(numbers(&[p]).is_empty());
        // 79 bytes and the NUL: the longest name there is
        let p = param(&full[..79], sys::VIR_TYPED_PARAM_ULLONG, 7);
        assert_eq!(name(&p).map(str::len), Some(79));
    }

    #[test]
    fn a_name_that_is_not_utf8_is_skipped() {
        let p = param(b"balloon.\xff", sys::VIR_TYPED_PARAM_ULLONG, 7);
        assert_eq!(name(&p), None);
    }
}
