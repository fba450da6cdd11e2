//! The part of Envoy's dynamic-module C ABI (Envoy 1.40,
//! `source/extensions/dynamic_modules/abi/abi.h`) this filter uses, written by hand:
//! Envoy ships no Rust SDK on crates.io, and a dozen declarations do not need
//! bindgen and libclang at build time. Types and functions keep the header's names
//! (without its `envoy_dynamic_module_` prefix) so each can be checked against it.
//!
//! Everything unsafe about talking to Envoy is in this file: `Stream` wraps the
//! per-request pointer in safe methods, valid for the duration of one event hook.

#![allow(unsafe_code)]

use std::ffi::c_void;
use std::os::raw::c_char;

/// `envoy_dynamic_module_type_http_filter_envoy_ptr`: Envoy's side of one stream.
pub type FilterEnvoyPtr = *mut c_void;
/// `envoy_dynamic_module_type_http_filter_config_envoy_ptr`.
pub type ConfigEnvoyPtr = *mut c_void;
/// `envoy_dynamic_module_type_cert_validator_config_envoy_ptr`: Envoy's side of one
/// certificate validator, valid with the connection being verified during
/// `do_verify_cert_chain`.
pub type ValidatorEnvoyPtr = *mut c_void;

/// A buffer Envoy owns (`envoy_dynamic_module_type_envoy_buffer`): valid until the
/// end of the current event hook.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyBuffer {
    pub ptr: *const c_char,
    pub length: usize,
}

impl EnvoyBuffer {
    const EMPTY: EnvoyBuffer = EnvoyBuffer { ptr: std::ptr::null(), length: 0 };

    /// The bytes, borrowed for as long as the hook that produced them runs.
    ///
    /// # Safety
    /// `self` must come from Envoy during the current hook (or be empty).
    unsafe fn bytes<'a>(self) -> &'a [u8] {
        if self.ptr.is_null() || self.length == 0 {
            return &[];
        }
        std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.length)
    }
}

/// The certificates of a peer's chain as Envoy passes them to
/// `do_verify_cert_chain` (DER, leaf first).
///
/// # Safety
/// `certs` must point to `count` buffers Envoy passed to the running hook.
pub unsafe fn certificate_chain<'a>(certs: *const EnvoyBuffer, count: usize) -> Vec<&'a [u8]> {
    if certs.is_null() || count == 0 {
        return Vec::new();
    }
    std::slice::from_raw_parts(certs, count).iter().map(|buffer| buffer.bytes()).collect()
}

/// A buffer the module owns (`envoy_dynamic_module_type_module_buffer`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ModuleBuffer {
    pub ptr: *const c_char,
    pub length: usize,
}

impl ModuleBuffer {
    pub fn of(bytes: &[u8]) -> ModuleBuffer {
        ModuleBuffer { ptr: bytes.as_ptr().cast::<c_char>(), length: bytes.len() }
    }

    const NULL: ModuleBuffer = ModuleBuffer { ptr: std::ptr::null(), length: 0 };
}

/// `envoy_dynamic_module_type_envoy_http_header`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyHeader {
    key: EnvoyBuffer,
    value: EnvoyBuffer,
}

/// `envoy_dynamic_module_type_module_http_header`.
#[repr(C)]
pub struct ModuleHeader {
    key: ModuleBuffer,
    value: ModuleBuffer,
}

/// `envoy_dynamic_module_type_module_key_value_pair`.
#[repr(C)]
pub struct ModuleKeyValue {
    key: ModuleBuffer,
    value: ModuleBuffer,
}

/// `envoy_dynamic_module_type_http_header_type_RequestHeader`.
const REQUEST_HEADER: u32 = 0;

/// `envoy_dynamic_module_type_attribute_id`: the values this filter reads.
#[derive(Clone, Copy)]
#[repr(u32)]
pub enum Attribute {
    RequestProtocol = 10,
    SourceAddress = 24,
    DestinationAddress = 26,
    /// The first URI SAN of the peer certificate.
    ConnectionUriSanPeerCertificate = 37,
    /// Hex SHA-256 of the peer's DER certificate, from the TLS session itself.
    ConnectionSha256PeerCertificateDigest = 38,
}

/// `envoy_dynamic_module_type_on_http_filter_request_headers_status`.
pub const HEADERS_CONTINUE: u32 = 0;
pub const HEADERS_STOP_ITERATION: u32 = 1;

extern "C" {
    fn envoy_dynamic_module_callback_http_get_headers_size(filter: FilterEnvoyPtr, header_type: u32) -> usize;
    fn envoy_dynamic_module_callback_http_get_headers(
        filter: FilterEnvoyPtr,
        header_type: u32,
        result: *mut EnvoyHeader,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_header(
        filter: FilterEnvoyPtr,
        header_type: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        filter: FilterEnvoyPtr,
        attribute: u32,
        result: *mut EnvoyBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_send_response(
        filter: FilterEnvoyPtr,
        status: u32,
        headers: *mut ModuleHeader,
        headers_size: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );
    fn envoy_dynamic_module_callback_http_set_dynamic_metadata_string_batch(
        filter: FilterEnvoyPtr,
        namespace: ModuleBuffer,
        pairs: *mut ModuleKeyValue,
        count: usize,
    );
    fn envoy_dynamic_module_callback_get_most_specific_route_config(filter: FilterEnvoyPtr) -> *const c_void;
    fn envoy_dynamic_module_callback_http_get_filter_state_bytes(
        filter: FilterEnvoyPtr,
        key: ModuleBuffer,
        result: *mut EnvoyBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_cert_validator_set_error_details(
        validator: ValidatorEnvoyPtr,
        details: ModuleBuffer,
    );
    fn envoy_dynamic_module_callback_cert_validator_set_filter_state(
        validator: ValidatorEnvoyPtr,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
}

/// `envoy_dynamic_module_type_cert_validator_validation_status`.
const VALIDATION_SUCCESSFUL: u32 = 0;
const VALIDATION_FAILED: u32 = 1;
/// `envoy_dynamic_module_type_cert_validator_client_validation_status`.
const CLIENT_VALIDATED: u32 = 2;
const CLIENT_FAILED: u32 = 3;

/// `envoy_dynamic_module_type_cert_validator_validation_result` (12 bytes, fields
/// at 0, 4, 8 and 9, as Envoy's own ABI sentinels pin them).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ValidationResult {
    status: u32,
    detailed_status: u32,
    tls_alert: u8,
    has_tls_alert: bool,
}

impl ValidationResult {
    pub const VALIDATED: ValidationResult = ValidationResult {
        status: VALIDATION_SUCCESSFUL,
        detailed_status: CLIENT_VALIDATED,
        tls_alert: 0,
        has_tls_alert: false,
    };

    /// Failed, with the TLS alert the client receives.
    pub const fn failed(alert: u8) -> ValidationResult {
        ValidationResult {
            status: VALIDATION_FAILED,
            detailed_status: CLIENT_FAILED,
            tls_alert: alert,
            has_tls_alert: true,
        }
    }
}

/// TLS alerts (RFC 8446 §6.2) a refused certificate is answered with.
pub const ALERT_BAD_CERTIFICATE: u8 = 42;
pub const ALERT_CERTIFICATE_EXPIRED: u8 = 45;
pub const ALERT_UNKNOWN_CA: u8 = 48;
pub const ALERT_ACCESS_DENIED: u8 = 49;

/// One certificate verification in a TLS handshake, during
/// `do_verify_cert_chain`: what the validator may tell Envoy about the connection.
pub struct Handshake {
    ptr: ValidatorEnvoyPtr,
}

impl Handshake {
    /// # Safety
    /// `ptr` must be the `config_envoy_ptr` Envoy passed to the running
    /// `do_verify_cert_chain`.
    pub unsafe fn new(ptr: ValidatorEnvoyPtr) -> Handshake {
        Handshake { ptr }
    }

    /// Stores `value` under `key` on the connection (read-only, for the
    /// connection's life), for the HTTP filter of every request on it.
    pub fn set_filter_state(&self, key: &str, value: &[u8]) -> bool {
        // SAFETY: `ptr` is valid during this verification; Envoy copies both buffers.
        unsafe {
            envoy_dynamic_module_callback_cert_validator_set_filter_state(
                self.ptr,
                ModuleBuffer::of(key.as_bytes()),
                ModuleBuffer::of(value),
            )
        }
    }

    /// Why the certificate was refused, for Envoy's log and
    /// `%DOWNSTREAM_TRANSPORT_FAILURE_REASON%`.
    pub fn set_error_details(&self, details: &str) {
        // SAFETY: as for `set_filter_state`; Envoy copies the buffer.
        unsafe {
            envoy_dynamic_module_callback_cert_validator_set_error_details(
                self.ptr,
                ModuleBuffer::of(details.as_bytes()),
            )
        }
    }
}

/// One HTTP stream, during one event hook. Safe to use because Envoy guarantees
/// the pointer for the hook's duration, and nothing here outlives it: every
/// borrowed slice is tied to `&self`.
pub struct Stream {
    ptr: FilterEnvoyPtr,
}

impl Stream {
    /// # Safety
    /// `ptr` must be the `filter_envoy_ptr` Envoy passed to the running hook.
    pub unsafe fn new(ptr: FilterEnvoyPtr) -> Stream {
        Stream { ptr }
    }

    /// Every request header, pseudo-headers included, in Envoy's order; one entry
    /// per occurrence. Bytes, as Envoy holds them: not necessarily UTF-8.
    pub fn request_headers(&self) -> Vec<(&[u8], &[u8])> {
        // SAFETY: `ptr` is valid for this hook; the array is sized by Envoy's own
        // count, and Envoy fills every entry with buffers valid for this hook.
        unsafe {
            let count = envoy_dynamic_module_callback_http_get_headers_size(self.ptr, REQUEST_HEADER);
            if count == 0 {
                return Vec::new();
            }
            let mut raw = vec![EnvoyHeader { key: EnvoyBuffer::EMPTY, value: EnvoyBuffer::EMPTY }; count];
            if !envoy_dynamic_module_callback_http_get_headers(self.ptr, REQUEST_HEADER, raw.as_mut_ptr()) {
                return Vec::new();
            }
            raw.into_iter().map(|h| (h.key.bytes(), h.value.bytes())).collect()
        }
    }

    /// A connection or request attribute; `None` when Envoy has none (for example
    /// no peer certificate).
    pub fn attribute(&self, attribute: Attribute) -> Option<&[u8]> {
        let mut result = EnvoyBuffer::EMPTY;
        // SAFETY: `ptr` is valid for this hook; `result` is a live out-parameter.
        let found = unsafe {
            envoy_dynamic_module_callback_http_filter_get_attribute_string(self.ptr, attribute as u32, &mut result)
        };
        // SAFETY: Envoy filled `result` during this hook.
        found.then(|| unsafe { result.bytes() })
    }

    /// A bytes value of the stream's filter state (the connection's included); `None`
    /// when there is none under `key`.
    pub fn filter_state(&self, key: &str) -> Option<&[u8]> {
        let mut result = EnvoyBuffer::EMPTY;
        // SAFETY: `ptr` is valid for this hook; the key lives until the call returns;
        // `result` is a live out-parameter.
        let found = unsafe {
            envoy_dynamic_module_callback_http_get_filter_state_bytes(
                self.ptr,
                ModuleBuffer::of(key.as_bytes()),
                &mut result,
            )
        };
        // SAFETY: Envoy filled `result` during this hook.
        found.then(|| unsafe { result.bytes() })
    }

    /// Sets a request header for the upstream, replacing every copy of it.
    pub fn set_request_header(&self, name: &str, value: &str) -> bool {
        // SAFETY: `ptr` is valid for this hook; Envoy copies both buffers.
        unsafe {
            envoy_dynamic_module_callback_http_set_header(
                self.ptr,
                REQUEST_HEADER,
                ModuleBuffer::of(name.as_bytes()),
                ModuleBuffer::of(value.as_bytes()),
            )
        }
    }

    /// Removes every copy of a request header (a null value means remove).
    pub fn remove_request_header(&self, name: &str) -> bool {
        // SAFETY: as for `set_request_header`.
        unsafe {
            envoy_dynamic_module_callback_http_set_header(
                self.ptr,
                REQUEST_HEADER,
                ModuleBuffer::of(name.as_bytes()),
                ModuleBuffer::NULL,
            )
        }
    }

    /// Answers the request locally; the caller then stops the filter chain.
    pub fn send_response(&self, status: u16, headers: &[(String, String)], body: &str, details: &str) {
        let mut headers: Vec<ModuleHeader> = headers
            .iter()
            .map(|(k, v)| ModuleHeader { key: ModuleBuffer::of(k.as_bytes()), value: ModuleBuffer::of(v.as_bytes()) })
            .collect();
        // SAFETY: `ptr` is valid for this hook; the header array and the buffers it
        // points into live until the call returns, and Envoy copies them.
        unsafe {
            envoy_dynamic_module_callback_http_send_response(
                self.ptr,
                u32::from(status),
                headers.as_mut_ptr(),
                headers.len(),
                ModuleBuffer::of(body.as_bytes()),
                ModuleBuffer::of(details.as_bytes()),
            );
        }
    }

    /// Dynamic metadata for access logs, under `namespace`: one call for every
    /// pair (each call rebuilds Envoy's metadata struct, so one per pair costs).
    pub fn set_metadata(&self, namespace: &str, pairs: &[(&str, &str)]) {
        let mut pairs: Vec<ModuleKeyValue> = pairs
            .iter()
            .map(|(k, v)| ModuleKeyValue { key: ModuleBuffer::of(k.as_bytes()), value: ModuleBuffer::of(v.as_bytes()) })
            .collect();
        // SAFETY: `ptr` is valid for this hook; the pairs and the buffers they point
        // into live until the call returns, and Envoy copies them.
        unsafe {
            envoy_dynamic_module_callback_http_set_dynamic_metadata_string_batch(
                self.ptr,
                ModuleBuffer::of(namespace.as_bytes()),
                pairs.as_mut_ptr(),
                pairs.len(),
            );
        }
    }

    /// The most specific per-route configuration this module created for the
    /// stream's route, if any: the pointer `hooks` returned from
    /// `on_http_filter_per_route_config_new`.
    pub fn route_config<T>(&self) -> Option<&T> {
        // SAFETY: `ptr` is valid for this hook. Envoy hands back only pointers this
        // module returned from its per-route constructor, always a `Box<T>` of the
        // one per-route type, alive until Envoy calls the destroy hook, which it
        // does not do while a stream of that route runs.
        unsafe {
            let config = envoy_dynamic_module_callback_get_most_specific_route_config(self.ptr);
            config.cast::<T>().as_ref()
        }
    }
}
