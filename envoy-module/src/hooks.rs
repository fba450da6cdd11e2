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

use crate::abi::{
    ConfigEnvoyPtr, EnvoyBuffer, FilterEnvoyPtr, Handshake, Stream, ValidationResult, ValidatorEnvoyPtr,
    ALERT_BAD_CERTIFICATE, HEADERS_CONTINUE,
};
use crate::engine::Engine;
use crate::handshake::Validator;
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
    boxed("filter", || {
        Engine::start(config).map(|engine| {
            let identity = &engine.config().identity;
            let entries = engine.config().cache.certificate_entries.max(1024);
            let certificates = PeerCertificates::new(entries, identity.max_certificate_bytes);
            Config { engine, certificates }
        })
    })
}

/// A configuration made by `start`, boxed for Envoy; null (Envoy then rejects the
/// configuration) when it fails or panics.
fn boxed<T, E: std::fmt::Display>(what: &str, start: impl FnOnce() -> Result<T, E>) -> *const c_void {
    match catch_unwind(AssertUnwindSafe(start)) {
        Ok(Ok(config)) => Box::into_raw(Box::new(config)).cast::<c_void>(),
        Ok(Err(e)) => {
            // Envoy's own error only says the module failed; this says why (on
            // stderr: the failure may come before logging is set up).
            eprintln!("cedargate: the {what} configuration is refused: {e}");
            std::ptr::null()
        }
        Err(_) => {
            eprintln!("cedargate: loading the {what} configuration panicked");
            std::ptr::null()
        }
    }
}

/// Drops what `boxed` (or `Box::into_raw`) made; a panic in a destructor stops here.
///
/// # Safety
/// `config` is null or a `Box<T>` turned into a pointer, not dropped before.
unsafe fn drop_boxed<T>(config: *const c_void) {
    if !config.is_null() {
        let config = Box::from_raw(config.cast_mut().cast::<T>());
        let _ = catch_unwind(AssertUnwindSafe(move || drop(config)));
    }
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: *const c_void) {
    // SAFETY: made by `boxed` in `config_new` as a `Config`; Envoy destroys it once.
    drop_boxed::<Config>(config);
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
    // SAFETY: made by `Box::into_raw` in `per_route_config_new`; destroyed once.
    drop_boxed::<RouteConfig>(config);
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
        let engine = &config.engine;
        engine.decide(input, |decision| crate::respond::apply(&stream, decision, engine.config()))
    }));
    decided.unwrap_or_else(|_| {
        tracing::error!("the in-process filter panicked; the request is denied");
        crate::respond::deny_internal(&stream)
    })
}

// The certificate validator (`DynamicModuleCertValidatorConfig`): its pointer is a
// `Box<Validator>`, alive from `config_new` to `config_destroy`.

/// Loads the cedargate configuration named by `validator_config` and its trust
/// bundles. A null return makes Envoy reject the TLS context (and the listener).
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_cert_validator_config_new(
    _config_envoy_ptr: ValidatorEnvoyPtr,
    _name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    let config = bytes(config);
    boxed("certificate validator", || Validator::start(config))
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_cert_validator_config_destroy(config: *const c_void) {
    // SAFETY: made by `boxed` in `cert_validator_config_new` as a `Validator`;
    // destroyed once.
    drop_boxed::<Validator>(config);
}

/// One handshake's peer chain (DER, leaf first). Anything but a verified X.509-SVID,
/// a panic included, fails the handshake.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_cert_validator_do_verify_cert_chain(
    envoy: ValidatorEnvoyPtr,
    config: *const c_void,
    certs: *const EnvoyBuffer,
    count: usize,
    _host_name: EnvoyBuffer,
    is_server: bool,
) -> ValidationResult {
    // SAFETY: `config` is the `Validator` from `config_new`; `envoy`, `certs` and
    // `count` are this verification's, valid until it returns.
    let Some(validator) = config.cast::<Validator>().as_ref() else {
        return ValidationResult::failed(ALERT_BAD_CERTIFICATE);
    };
    let handshake = Handshake::new(envoy);
    let chain = crate::abi::certificate_chain(certs, count);
    catch_unwind(AssertUnwindSafe(|| validator.verify(&handshake, &chain, is_server))).unwrap_or_else(|_| {
        tracing::error!("the certificate validator panicked; the handshake fails");
        ValidationResult::failed(ALERT_BAD_CERTIFICATE)
    })
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_cert_validator_get_ssl_verify_mode(
    config: *const c_void,
    _handshaker_provides_certificates: bool,
) -> i32 {
    // SAFETY: `config` is the `Validator` from `config_new`.
    config.cast::<Validator>().as_ref().map_or(0x03, Validator::verify_mode)
}

/// What TLS session ids are tied to, so a session made under other bundles or
/// another configuration is not resumed.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_cert_validator_update_digest(
    config: *const c_void,
    out: *mut crate::abi::ModuleBuffer,
) {
    // SAFETY: `config` is the `Validator` from `config_new`, whose bytes live as long
    // as it does; `out` is Envoy's live out-parameter.
    if let (Some(validator), Some(out)) = (config.cast::<Validator>().as_ref(), out.as_mut()) {
        *out = crate::abi::ModuleBuffer::of(validator.session_context());
    }
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
