//! The client side of the daemon's local console (`api::console`): the installer tools on the
//! box (`scan`, `units test`, `units watch`) ask the running daemon over its Unix socket, so the
//! link task probes and reads between its poll reads and nobody fights it for a serial port.
//!
//! A socket that is missing, or that nobody answers on (a stale file), means no daemon: the tools
//! then open the bus themselves. A socket that refuses the caller is an error with a hint, never
//! a silent fallback (the daemon is running and holds the bus).

use std::path::Path;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::UnixStream;

/// The most a console answer may hold.
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;
/// Time allowed for one request (the daemon bounds its own device reads well below this).
const REQUEST_LIMIT: Duration = Duration::from_secs(120);

/// Why a console request did not get an answer.
#[derive(Debug)]
pub enum CallError {
    /// No daemon listens: no socket file, or nobody accepts on it.
    NoDaemon,
    /// The daemon refused this user (socket permissions, or its uid check).
    Refused,
    /// Anything else, said in words.
    Failed(String),
}

/// One request to the console: status and JSON body (`null` when the body is not JSON).
pub async fn call(
    socket: &Path,
    method: Method,
    uri: &str,
    body: Option<&Value>,
) -> Result<(u16, Value), CallError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                CallError::NoDaemon
            }
            std::io::ErrorKind::PermissionDenied => CallError::Refused,
            _ => CallError::Failed(format!("cannot connect to `{}`: {e}", socket.display())),
        })?;
    let exchange = async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        let driver = tokio::spawn(conn);
        let bytes = body.map(Value::to_string).unwrap_or_default();
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("host", "console")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        driver.abort();
        Ok::<_, String>((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
    };
    match tokio::time::timeout(REQUEST_LIMIT, exchange).await {
        Err(_) => Err(CallError::Failed(format!(
            "the daemon did not answer within {} s",
            REQUEST_LIMIT.as_secs()
        ))),
        Ok(Err(e)) => Err(CallError::Failed(format!(
            "console `{}`: {e}",
            socket.display()
        ))),
        Ok(Ok((403, v))) if v["error"] == crate::api::console::REFUSED_CODE => {
            Err(CallError::Refused)
        }
        Ok(Ok(answer)) => Ok(answer),
    }
}

/// This process's effective uid (the owner of what it makes; `/proc/self` belongs to it).
fn own_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// Says why a console request failed (not for [`CallError::NoDaemon`], which the tools answer
/// by using the bus directly); returns exit code 1.
pub fn report(socket: &Path, e: &CallError) -> i32 {
    match e {
        CallError::NoDaemon => {
            eprintln!("error: no daemon answers on `{}`", socket.display());
        }
        CallError::Refused => {
            let uid = own_uid().map_or_else(|| "?".to_string(), |u| u.to_string());
            eprintln!(
                "error: the daemon is running, and its console `{}` refused this user (uid \
                 {uid}): only root and the daemon's user may use it",
                socket.display()
            );
            eprintln!(
                "hint: run the command as root (`sudo sitegate …`) or as the daemon's user \
                 (`sudo -u sitegate sitegate …`); `--direct` opens the bus itself and needs the \
                 daemon stopped on a serial link (`systemctl stop sitegate`)"
            );
        }
        CallError::Failed(m) => eprintln!("error: {m}"),
    }
    1
}

/// The `message` of an error answer, or the status when there is none.
pub fn message(status: u16, v: &Value) -> String {
    v["message"]
        .as_str()
        .map_or_else(|| format!("the daemon answered {status}"), str::to_string)
}

/// A path segment: ids of the config grammar need no escaping, anything else is refused by the
/// daemon as unknown.
pub fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refused_connection_is_told_so_and_a_missing_or_dead_socket_means_no_daemon() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.sock");
        assert!(matches!(
            call(&path, Method::GET, "/api/v1/units", None).await,
            Err(CallError::NoDaemon)
        ));
        // The daemon's answer to a uid it does not admit, over a real socket.
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            crate::api::console::answer_refused(stream).await;
            listener
        });
        assert!(matches!(
            call(
                &path,
                Method::POST,
                "/api/v1/scans",
                Some(&serde_json::json!({}))
            )
            .await,
            Err(CallError::Refused)
        ));
        // A stale socket file nobody accepts on: no daemon.
        drop(server.await.unwrap());
        assert!(path.exists());
        assert!(matches!(
            call(&path, Method::GET, "/api/v1/units", None).await,
            Err(CallError::NoDaemon)
        ));
    }

    #[test]
    fn path_segments_keep_ids_and_escape_anything_else() {
        assert_eq!(segment("gen-1_a.b"), "gen-1_a.b");
        assert_eq!(segment("a/b?c"), "a%2Fb%3Fc");
    }
}
