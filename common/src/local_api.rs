//! A daemon's local control socket (`<daemon>.sock` in its state dir, owner-only): one JSON
//! request line in, one JSON answer line out. `node status`, `node down` and `relay status`
//! use it.

use anyhow::Context;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};

/// A request and where its answer goes.
pub type Call<Req, Resp> = (Req, oneshot::Sender<Resp>);

/// Sends one request to the `daemon` ("node", "relay") behind `socket`.
pub fn call<Req: Serialize, Resp: DeserializeOwned>(
    socket: &Path,
    daemon: &str,
    request: &Req,
) -> anyhow::Result<Resp> {
    let mut stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => anyhow::anyhow!(
            "no {daemon} daemon is running with state dir {} (is `{daemon}` started, and with \
             the same --state-dir?)",
            socket
                .parent()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        ),
        std::io::ErrorKind::PermissionDenied => {
            anyhow::anyhow!("not allowed to talk to the {daemon} daemon: run with sudo")
        }
        _ => anyhow::anyhow!(
            "cannot reach the {daemon} daemon at {}: {e}",
            socket.display()
        ),
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    serde_json::from_str(&answer)
        .map_err(|_| anyhow::anyhow!("the {daemon} daemon gave an answer this version cannot read"))
}

/// Creates the socket (refusing if a daemon already answers on it; a stale one is replaced).
pub fn listen(socket: &Path, daemon: &str) -> anyhow::Result<UnixListener> {
    if UnixStream::connect(socket).is_ok() {
        anyhow::bail!(
            "a {daemon} daemon is already running with state dir {}: stop it first",
            socket
                .parent()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        );
    }
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket)
        .with_context(|| format!("cannot create the control socket {}", socket.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Answers requests on `listener` by passing them to `calls`. `early` may answer a request
/// before it is passed on (for requests after which the daemon stops).
pub fn serve<Req, Resp>(
    listener: UnixListener,
    calls: mpsc::Sender<Call<Req, Resp>>,
    early: fn(&Req) -> Option<Resp>,
) where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + Sync + 'static,
{
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let calls = calls.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                // A local client cannot make the daemon buffer more than this.
                let mut reader = tokio::io::BufReader::new(read.take(4096));
                if reader.read_line(&mut line).await.is_err() {
                    return;
                }
                let Ok(request) = serde_json::from_str::<Req>(&line) else {
                    return;
                };
                let answered = early(&request);
                if let Some(answer) = &answered {
                    write_line(&mut write, answer).await;
                }
                let (tx, rx) = oneshot::channel();
                if calls.send((request, tx)).await.is_err() {
                    return;
                }
                if let (Ok(response), None) = (rx.await, answered) {
                    write_line(&mut write, &response).await;
                }
            });
        }
    });
}

async fn write_line<T: Serialize>(write: &mut tokio::net::unix::OwnedWriteHalf, value: &T) {
    if let Ok(mut text) = serde_json::to_string(value) {
        text.push('\n');
        let _ = write.write_all(text.as_bytes()).await;
    }
}
