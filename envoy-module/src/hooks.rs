//! The event hooks Envoy 1.40 resolves in an HTTP-filter module, by the names and
//! signatures of `abi.h`. Each one catches panics: a panic must never unwind into
//! Envoy (that aborts the process); a request whose hook panicked is denied.
//!
//! Pointers handed to Envoy: the filter configuration is a `Box<Config>`, a route's
//! configuration a `Box<RouteConfig>`. A stream needs no state of its own (the
//! decision is made in one hook), so a filter's pointer is its configuration's,
//! which Envoy keeps alive for as long as any of its filters lives.

#![allow(unsafe_code)]

use std::ffi::c_void;
use std::os::raw::c_char;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::abi::{ConfigEnvoyPtr, EnvoyBuffer, FilterEnvoyPtr, Stream, HEADERS_CONTINUE};
use crate::engine::Engine;
use crate::request::PeerCertificates;

/// What one `DynamicModuleFilter` configuration holds.
struct Config {
    engine: Engine,
    certificates: PeerCertificates,
}

/// A route's `DynamicModuleFilterPerRoute` configuration: the policy set that
/// decides its requests (what `context_extensions` say to the ext_authz server).
struct RouteConfig {
    policy_set: String,
}

/// The ABI version this module was written against. Envoy compares it and only
/// warns on a difference; symbol resolution at load time is the real check.
static ABI_VERSION: &[u8] = b"v0.1.0\0";

/// # Safety
/// Called by Envoy with a buffer valid for the duration of the hook.
unsafe fn bytes<'a>(buffer: EnvoyBuffer) -> &'a [u8] {
    if buffer.ptr.is_null() || buffer.length == 0 {
        return &[];
    }
    std::slice::from_raw_parts(buffer.ptr.cast::<u8>(), buffer.length)
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    ABI_VERSION.as_ptr().cast::<c_char>()
}

/// Loads the cedargate configuration named by `filter_config`. A null return makes
/// Envoy reject the configuration, so Envoy never serves without its policies.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    _config_envoy_ptr: ConfigEnvoyPtr,
    _name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    let config = bytes(config);
    let started = catch_unwind(|| Engine::start(config));
    match started {
        Ok(Ok(engine)) => {
            let identity = &engine.config().identity;
            let entries = engine.config().cache.certificate_entries.max(1024);
            let certificates = PeerCertificates::new(entries, identity.max_certificate_bytes);
            Box::into_raw(Box::new(Config { engine, certificates })).cast::<c_void>()
        }
        Ok(Err(e)) => {
            // Envoy's own error only says the module failed; this says why (on
            // stderr: the failure may come before logging is set up).
            eprintln!("cedargate: the filter configuration is refused: {e}");
            std::ptr::null()
        }
        Err(_) => {
            eprintln!("cedargate: loading the filter configuration panicked");
            std::ptr::null()
        }
    }
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: *const c_void) {
    if !config.is_null() {
        // SAFETY: made by `Box::into_raw` in `config_new`; Envoy destroys it once.
        let config = Box::from_raw(config.cast_mut().cast::<Config>());
        let _ = catch_unwind(AssertUnwindSafe(move || drop(config)));
    }
}

/// The route's policy set, from a `StringValue`. Empty or non-UTF-8 refuses.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_new(
    _name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    match std::str::from_utf8(bytes(config)).map(str::trim) {
        Ok(set) if !set.is_empty() => {
            Box::into_raw(Box::new(RouteConfig { policy_set: set.to_owned() })).cast::<c_void>()
        }
        _ => {
            eprintln!("cedargate: a route's filter_config must name a policy set (a non-empty StringValue)");
            std::ptr::null()
        }
    }
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_destroy(config: *const c_void) {
    if !config.is_null() {
        // SAFETY: made by `Box::into_raw` in `per_route_config_new`; destroyed once.
        drop(Box::from_raw(config.cast_mut().cast::<RouteConfig>()));
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: *const c_void,
    _filter: FilterEnvoyPtr,
) -> *const c_void {
    config
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(_filter: *const c_void) {}

/// The decision: the request continues, or is answered here.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    envoy: FilterEnvoyPtr,
    filter: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    // SAFETY: `envoy` is this hook's stream; `filter` is the `Config` returned by
    // `config_new`, alive while its filters are.
    let stream = Stream::new(envoy);
    let Some(config) = filter.cast::<Config>().as_ref() else {
        return crate::respond::deny_internal(&stream);
    };
    let decided = catch_unwind(AssertUnwindSafe(|| {
        let policy_set = stream.route_config::<RouteConfig>().map(|r| r.policy_set.as_str());
        let input = crate::request::check_input(&stream, policy_set, &config.certificates);
        let decision = config.engine.decide(&input);
        crate::respond::apply(&stream, &decision, config.engine.config())
    }));
    decided.unwrap_or_else(|_| {
        tracing::error!("the in-process filter panicked; the request is denied");
        crate::respond::deny_internal(&stream)
    })
}

// What follows Envoy requires to exist; the decision is made on the request
// headers, so every other event passes through.

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    _: FilterEnvoyPtr,
    _: *const c_void,
    _: bool,
) -> u32 {
    HEADERS_CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(_: FilterEnvoyPtr, _: *const c_void) -> u32 {
    HEADERS_CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    _: FilterEnvoyPtr,
    _: *const c_void,
    _: bool,
) -> u32 {
    HEADERS_CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    _: FilterEnvoyPtr,
    _: *const c_void,
    _: bool,
) -> u32 {
    HEADERS_CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(_: FilterEnvoyPtr, _: *const c_void) -> u32 {
    HEADERS_CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(_: FilterEnvoyPtr, _: *const c_void) {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(_: FilterEnvoyPtr, _: *const c_void, _: u64) {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _: FilterEnvoyPtr,
    _: *const c_void,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _: FilterEnvoyPtr,
    _: *const c_void,
) {
}

// This filter starts no HTTP callouts or streams: these are never called.

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(_: FilterEnvoyPtr, _: *const c_void, _: u64) {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(_: FilterEnvoyPtr, _: *const c_void, _: u64) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(_: FilterEnvoyPtr, _: *const c_void, _: u64) {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _: FilterEnvoyPtr,
    _: *const c_void,
    _: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _: FilterEnvoyPtr,
    _: *const c_void,
    _: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(_: FilterEnvoyPtr, _: *const c_void, _: u64) {}
