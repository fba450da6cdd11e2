//! How the tests and the benchmarks (which include this file by path) learn the
//! ports a process got when it was told to bind port 0: no port is picked,
//! released and hoped to be still free.

use std::time::Duration;

/// The address cedargate logged with `message` (`cedargate listening`, `admin
/// listening`), in the text or JSON log format; the last such line wins.
pub fn logged_address(log: &str, message: &str) -> Option<String> {
    let line = log.lines().rev().find(|l| l.contains(message))?;
    let value = line.split("addr=").nth(1).or_else(|| line.split("\"addr\":\"").nth(1))?;
    Some(value.split([' ', '"']).next()?.to_owned())
}

/// The port of Envoy's (first) listener, from the admin listener at `admin`
/// (`ip:port`, as Envoy writes it to `--admin-address-path`), once it is bound.
pub fn envoy_listener_port(admin: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(admin.trim()).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET /listeners?format=json HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, mut rest) = response.split_once("\r\n\r\n")?;
    let mut body = String::new();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        // `<hex size>\r\n<data>\r\n` ... `0\r\n\r\n`
        while let Some((size, after)) = rest.split_once("\r\n") {
            let size = usize::from_str_radix(size.trim(), 16).ok()?;
            if size == 0 {
                break;
            }
            body.push_str(after.get(..size)?);
            rest = after.get(size + 2..)?;
        }
    } else {
        body.push_str(rest);
    }
    let body: serde_json::Value = serde_json::from_str(&body).ok()?;
    let port = body["listener_statuses"][0]["local_address"]["socket_address"]["port_value"].as_u64()?;
    u16::try_from(port).ok().filter(|p| *p != 0)
}
