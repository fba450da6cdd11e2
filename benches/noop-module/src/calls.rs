//! The calls into Envoy that cedargate's filter makes for an allowed request on a
//! connection whose certificate its validator checked (`envoy-module/src/request.rs`
//! and `respond.rs`), with values of the same sizes: without cedargate's own work
//! (the decision, the audit record, the metrics), what reading the request and
//! answering it cost Envoy. Declared by hand from `abi.h`, as in `envoy-module/src/abi.rs`.

use std::ffi::c_void;
use std::os::raw::c_char;

use crate::EnvoyBuffer;

/// `envoy_dynamic_module_type_module_buffer`.
#[repr(C)]
struct ModuleBuffer {
    ptr: *const c_char,
    length: usize,
}

impl ModuleBuffer {
    fn of(bytes: &[u8]) -> ModuleBuffer {
        ModuleBuffer { ptr: bytes.as_ptr().cast::<c_char>(), length: bytes.len() }
    }
}

/// `envoy_dynamic_module_type_envoy_http_header`.
#[repr(C)]
#[derive(Clone, Copy)]
struct EnvoyHeader {
    key: EnvoyBuffer,
    value: EnvoyBuffer,
}

/// `envoy_dynamic_module_type_module_key_value_pair`.
#[repr(C)]
struct ModuleKeyValue {
    key: ModuleBuffer,
    value: ModuleBuffer,
}

extern "C" {
    fn envoy_dynamic_module_callback_http_get_headers_size(filter: *mut c_void, header_type: u32) -> usize;
    fn envoy_dynamic_module_callback_http_get_headers(
        filter: *mut c_void,
        header_type: u32,
        result: *mut EnvoyHeader,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_header(
        filter: *mut c_void,
        header_type: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        filter: *mut c_void,
        attribute: u32,
        result: *mut EnvoyBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_dynamic_metadata_string_batch(
        filter: *mut c_void,
        namespace: ModuleBuffer,
        pairs: *mut ModuleKeyValue,
        count: usize,
    );
    fn envoy_dynamic_module_callback_get_most_specific_route_config(filter: *mut c_void) -> *const c_void;
    fn envoy_dynamic_module_callback_http_get_filter_state_bytes(
        filter: *mut c_void,
        key: ModuleBuffer,
        result: *mut EnvoyBuffer,
    ) -> bool;
}

/// `envoy_dynamic_module_type_http_header_type_RequestHeader`.
const REQUEST_HEADER: u32 = 0;
/// `envoy_dynamic_module_type_attribute_id`: request protocol, source address,
/// destination address, the peer certificate's URI SAN (the digest is read only
/// without the validator's filter state).
const ATTRIBUTES: [u32; 4] = [10, 24, 26, 37];

/// What cedargate sets for an allowed request from the benchmark's client, with
/// values as long as the ones it sets.
const METADATA: [(&str, &str); 6] = [
    ("decision_id", "01JDZK8Q9W7E3M5N6P2R4S8T0V"),
    ("decision", "allow"),
    ("reason", "allowed"),
    ("policy_version", "sha256:5f0c6a1e9b2d7c3a"),
    ("principal", "spiffe://example.org/ns/default/sa/frontend"),
    ("policies", "frontend-reads-orders"),
];
const HEADERS: [(&str, &str); 2] = [
    ("x-cedargate-principal", "spiffe://example.org/ns/default/sa/frontend"),
    ("x-cedargate-decision-id", "01JDZK8Q9W7E3M5N6P2R4S8T0V"),
];

/// Reads what cedargate reads and sets what it sets; returns the bytes read, so
/// the reads cannot be optimized away.
///
/// # Safety
/// `envoy` is the stream Envoy passed to the running hook.
pub unsafe fn make(envoy: *mut c_void) -> usize {
    let mut read = 0;
    // SAFETY: `envoy` is valid during this hook; every out-parameter is live, the
    // header array is sized by Envoy's own count, and every buffer passed in lives
    // until the call returns (Envoy copies what it keeps).
    unsafe {
        envoy_dynamic_module_callback_get_most_specific_route_config(envoy);
        let count = envoy_dynamic_module_callback_http_get_headers_size(envoy, REQUEST_HEADER);
        let mut headers = vec![EnvoyHeader { key: EnvoyBuffer::EMPTY, value: EnvoyBuffer::EMPTY }; count];
        if count > 0 && envoy_dynamic_module_callback_http_get_headers(envoy, REQUEST_HEADER, headers.as_mut_ptr()) {
            // cedargate copies every header name and value into its input.
            let copied: Vec<(Vec<u8>, Vec<u8>)> =
                headers.iter().map(|h| (h.key.bytes().to_vec(), h.value.bytes().to_vec())).collect();
            read += copied.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        }
        let mut state = EnvoyBuffer::EMPTY;
        if envoy_dynamic_module_callback_http_get_filter_state_bytes(
            envoy,
            ModuleBuffer::of(b"cedargate.peer_certificate"),
            &mut state,
        ) {
            read += state.bytes().len();
        }
        for attribute in ATTRIBUTES {
            let mut value = EnvoyBuffer::EMPTY;
            if envoy_dynamic_module_callback_http_filter_get_attribute_string(envoy, attribute, &mut value) {
                read += value.bytes().len();
            }
        }
        let mut pairs: Vec<ModuleKeyValue> = METADATA
            .iter()
            .map(|(k, v)| ModuleKeyValue { key: ModuleBuffer::of(k.as_bytes()), value: ModuleBuffer::of(v.as_bytes()) })
            .collect();
        envoy_dynamic_module_callback_http_set_dynamic_metadata_string_batch(
            envoy,
            ModuleBuffer::of(b"cedargate"),
            pairs.as_mut_ptr(),
            pairs.len(),
        );
        for (name, value) in HEADERS {
            envoy_dynamic_module_callback_http_set_header(
                envoy,
                REQUEST_HEADER,
                ModuleBuffer::of(name.as_bytes()),
                ModuleBuffer::of(value.as_bytes()),
            );
        }
    }
    read
}
