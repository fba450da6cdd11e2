//! A benchmark baseline, never a filter to deploy: an Envoy 1.40 dynamic-module
//! HTTP filter that decides nothing and lets every request continue. `benches/envoy.rs`
//! runs it beside cedargate's module, so the share of the in-process cost that is
//! Envoy's own is measured in the same run, as the no-op Check server is for
//! ext_authz. Configured with anything but `calls`, it reads nothing: what Envoy
//! spends on any dynamic-module filter (creating it per stream, calling its hooks).
//! Configured with `calls`, it also makes the calls into Envoy that cedargate's
//! filter makes for an allowed request (`calls::make`), with values of the same
//! sizes, and still decides nothing: what those features cost Envoy by themselves.
//!
//! It holds only the hooks Envoy resolves when it loads an HTTP-filter module, by
//! the names and signatures of `abi.h` (`source/extensions/dynamic_modules/abi/`).
//! Only `calls` touches a pointer Envoy passes.

mod calls;

use std::ffi::c_void;
use std::os::raw::c_char;

/// `envoy_dynamic_module_type_envoy_buffer`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyBuffer {
    pub ptr: *const c_char,
    pub length: usize,
}

impl EnvoyBuffer {
    const EMPTY: EnvoyBuffer = EnvoyBuffer { ptr: std::ptr::null(), length: 0 };

    /// # Safety
    /// `self` comes from Envoy during the running hook, or is empty.
    unsafe fn bytes<'a>(self) -> &'a [u8] {
        if self.ptr.is_null() || self.length == 0 {
            return &[];
        }
        // SAFETY: Envoy's buffer of `length` bytes, valid during the hook.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.length) }
    }
}

/// `envoy_dynamic_module_type_on_http_filter_request_headers_status_Continue`
/// (the same value for every status type).
const CONTINUE: u32 = 0;

/// Any non-null pointer: Envoy only checks that a configuration was made. `CALLS`
/// is the configuration that makes `calls::make`'s calls on every request.
static CONFIG: u8 = 0;
static CALLS: u8 = 1;

fn config() -> *const c_void {
    std::ptr::addr_of!(CONFIG).cast::<c_void>()
}

fn calls_config() -> *const c_void {
    std::ptr::addr_of!(CALLS).cast::<c_void>()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    c"v0.1.0".as_ptr()
}

/// `calls` when `filter_config` is the string `calls`.
///
/// # Safety
/// `filter_config` is a buffer Envoy passes to this hook.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    _: *mut c_void,
    _: EnvoyBuffer,
    filter_config: EnvoyBuffer,
) -> *const c_void {
    // SAFETY: Envoy's buffer, valid during this hook.
    match unsafe { filter_config.bytes() } {
        b"calls" => calls_config(),
        _ => config(),
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(_: *const c_void) {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_new(
    _: EnvoyBuffer,
    _: EnvoyBuffer,
) -> *const c_void {
    config()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_destroy(_: *const c_void) {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(config: *const c_void, _: *mut c_void) -> *const c_void {
    config
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(_: *const c_void) {}

/// # Safety
/// `envoy` is the stream Envoy passes to this hook.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    envoy: *mut c_void,
    filter: *const c_void,
    _: bool,
) -> u32 {
    if filter == calls_config() {
        // SAFETY: `envoy` is this hook's stream.
        unsafe { calls::make(envoy) };
    }
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(_: *mut c_void, _: *const c_void, _: bool) -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(_: *mut c_void, _: *const c_void) -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    _: *mut c_void,
    _: *const c_void,
    _: bool,
) -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(_: *mut c_void, _: *const c_void, _: bool) -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(_: *mut c_void, _: *const c_void) -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(_: *mut c_void, _: *const c_void) {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(_: *mut c_void, _: *const c_void, _: u64) {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _: *mut c_void,
    _: *const c_void,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _: *mut c_void,
    _: *const c_void,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(_: *mut c_void, _: *const c_void, _: u64) {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(_: *mut c_void, _: *const c_void, _: u64) {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(_: *mut c_void, _: *const c_void, _: u64) {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(_: *mut c_void, _: *const c_void, _: u64) {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(_: *mut c_void, _: *const c_void, _: u64) {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(_: *mut c_void, _: *const c_void, _: u64) {}
