//! An in-process mock of a Hugging Face hub on 127.0.0.1, with a second
//! server on another port acting as the CDN that LFS files redirect to, and
//! a third acting as PyPI's JSON API (its wheels are on the CDN too).
//! It speaks what the clients use: `HEAD`/`GET /{repo}/resolve/{rev}/{file}`
//! (302 to the CDN for LFS files; for git files, as the live hub does, a
//! relative 307 to `/api/resolve-cache/models/{repo}/{commit}/{file}`,
//! which answers 200) with `X-Repo-Commit`, `ETag`, `X-Linked-Etag`,
//! `X-Linked-Size`, `X-Error-Code`; `Range`;
//! `GET /api/models/{repo}/revision/{rev}`; and on the index
//! `GET /pypi/{project}/{version}/json`. Faults are injected per file (a
//! cut connection, a corrupted body, a slow body). Every request is logged.
//!
//! Shared with csm-cli's tests through `#[path]`.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha1::Digest as _;

/// A file the mock serves.
#[derive(Debug, Clone)]
pub struct MockFile {
    /// `org/name`.
    pub repo: String,
    /// Path in the repo.
    pub file: String,
    /// Bytes.
    pub content: Vec<u8>,
    /// Stored in LFS: served from the CDN, ETag = sha256.
    pub lfs: bool,
}

impl MockFile {
    /// A file kept in git (ETag = git blob sha1).
    pub fn git(repo: &str, file: &str, content: &[u8]) -> Self {
        Self {
            repo: repo.into(),
            file: file.into(),
            content: content.to_vec(),
            lfs: false,
        }
    }

    /// An LFS file (redirects to the CDN, ETag = sha256).
    pub fn lfs(repo: &str, file: &str, content: Vec<u8>) -> Self {
        Self {
            repo: repo.into(),
            file: file.into(),
            content,
            lfs: true,
        }
    }

    /// Its ETag as the hub announces it.
    pub fn etag(&self) -> String {
        if self.lfs {
            sha256_hex(&self.content)
        } else {
            git_sha1_hex(&self.content)
        }
    }
}

/// One request received.
#[derive(Debug, Clone)]
pub struct Request {
    /// `hub` or `cdn`.
    pub server: &'static str,
    /// `HEAD`, `GET`.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Lower-case names.
    pub headers: HashMap<String, String>,
}

impl Request {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(|s| s.as_str())
    }
}

/// A release on the mock index: its wheel (and an sdist the client must
/// pass over).
#[derive(Debug, Clone)]
pub struct MockPackage {
    /// Project name.
    pub project: String,
    /// Release.
    pub version: String,
    /// The wheel, served from the CDN at `/packages/{file}` (its `file` is
    /// the wheel's name, the key for faults and served counts).
    pub wheel: Option<MockFile>,
}

#[derive(Default)]
struct State {
    files: Vec<MockFile>,
    packages: Vec<MockPackage>,
    gated: HashMap<String, String>,
    cut_next: HashMap<String, usize>,
    corrupt: HashSet<String>,
    throttle: Option<Duration>,
    requests: Vec<Request>,
    served: HashMap<String, Vec<u64>>,
}

/// The two servers and their shared state.
pub struct MockHub {
    /// The hub's base URL (`http://127.0.0.1:PORT`): the endpoint.
    pub url: String,
    /// The CDN's base URL.
    pub cdn_url: String,
    /// The package index's base URL (`CSM_PYPI_URL`).
    pub pypi_url: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

/// Lower-case hex sha256.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&sha2::Sha256::digest(data))
}

/// `git hash-object` of `data`.
pub fn git_sha1_hex(data: &[u8]) -> String {
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", data.len()).as_bytes());
    h.update(data);
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The commit every revision of `repo` resolves to.
pub fn commit_of(repo: &str) -> String {
    hex(&sha1::Sha1::digest(format!("commit of {repo}").as_bytes()))
}

/// `n` bytes of a fixed pseudo-random pattern.
pub fn pattern(n: usize, seed: u8) -> Vec<u8> {
    let mut x = seed as u32 | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

impl MockHub {
    /// Starts both servers, serving `files`.
    pub fn start(files: Vec<MockFile>) -> Self {
        let state = Arc::new(Mutex::new(State {
            files,
            ..State::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let hub = TcpListener::bind("127.0.0.1:0").unwrap();
        let cdn = TcpListener::bind("127.0.0.1:0").unwrap();
        let pypi = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", hub.local_addr().unwrap());
        let cdn_url = format!("http://{}", cdn.local_addr().unwrap());
        let pypi_url = format!("http://{}", pypi.local_addr().unwrap());
        for (listener, server) in [(hub, "hub"), (cdn, "cdn"), (pypi, "pypi")] {
            let state = state.clone();
            let stop = stop.clone();
            let cdn_url = cdn_url.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let state = state.clone();
                    let cdn_url = cdn_url.clone();
                    std::thread::spawn(move || {
                        let _ = handle(conn, server, &state, &cdn_url);
                    });
                }
            });
        }
        Self {
            url,
            cdn_url,
            pypi_url,
            state,
            stop,
        }
    }

    /// Publishes a release on the mock index; `wheel` is the wheel's name
    /// and bytes (`None`: a release with an sdist only).
    pub fn publish(&self, project: &str, version: &str, wheel: Option<(&str, Vec<u8>)>) {
        self.state.lock().unwrap().packages.push(MockPackage {
            project: project.into(),
            version: version.into(),
            wheel: wheel.map(|(name, content)| MockFile::lfs("pypi", name, content)),
        });
    }

    /// `repo` answers 401 without a token and 403 with another one than
    /// `token`.
    pub fn gate(&self, repo: &str, token: &str) {
        self.state
            .lock()
            .unwrap()
            .gated
            .insert(repo.into(), token.into());
    }

    /// The next body of `file` stops after `after` bytes (connection
    /// closed).
    pub fn cut_next(&self, file: &str, after: usize) {
        self.state
            .lock()
            .unwrap()
            .cut_next
            .insert(file.into(), after);
    }

    /// Serve `file` with one byte changed (or not, with `false`).
    pub fn corrupt(&self, file: &str, on: bool) {
        let mut s = self.state.lock().unwrap();
        if on {
            s.corrupt.insert(file.into());
        } else {
            s.corrupt.remove(file);
        }
    }

    /// Sleep this long per 16 KiB of body (read per chunk, so a change
    /// applies to transfers under way).
    pub fn throttle(&self, per_chunk: Option<Duration>) {
        self.state.lock().unwrap().throttle = per_chunk;
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Body bytes sent for `file`, one entry per GET that sent a body.
    pub fn served(&self, file: &str) -> Vec<u64> {
        self.state
            .lock()
            .unwrap()
            .served
            .get(file)
            .cloned()
            .unwrap_or_default()
    }

    /// Forgets the request log and served counts.
    pub fn clear_log(&self) {
        let mut s = self.state.lock().unwrap();
        s.requests.clear();
        s.served.clear();
    }
}

impl Drop for MockHub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for url in [&self.url, &self.cdn_url, &self.pypi_url] {
            let _ = TcpStream::connect(url.trim_start_matches("http://"));
        }
    }
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Content-Length to announce when it differs from `body` (HEAD).
    length: Option<usize>,
    file: Option<String>,
}

impl Reply {
    fn status(status: u16) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            length: None,
            file: None,
        }
    }

    fn header(mut self, k: &str, v: impl Into<String>) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }

    fn error(status: u16, code: &str) -> Self {
        Reply::status(status)
            .header("X-Error-Code", code)
            .header("X-Error-Message", format!("{code} (mock)"))
    }
}

fn handle(
    conn: TcpStream,
    server: &'static str,
    state: &Mutex<State>,
    cdn_url: &str,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let request = Request {
        server,
        method: method.clone(),
        path: path.clone(),
        headers,
    };
    state.lock().unwrap().requests.push(request.clone());
    let reply = route(&request, state, cdn_url);
    send(conn, &method, reply, state)
}

fn route(req: &Request, state: &Mutex<State>, cdn_url: &str) -> Reply {
    let s = state.lock().unwrap();
    let path = req.path.split('?').next().unwrap_or("");
    let token = req
        .header("authorization")
        .and_then(|a| a.strip_prefix("Bearer "))
        .map(str::to_string);
    // The hub answers the index's requests too, so a test can put the index
    // on the hub's origin and check that the token still stays away.
    if req.server == "pypi" || path.starts_with("/pypi/") {
        return pypi_route(path, &s, cdn_url);
    }
    if req.server == "cdn" {
        if let Some(name) = path.strip_prefix("/packages/") {
            return match s
                .packages
                .iter()
                .filter_map(|p| p.wheel.as_ref())
                .find(|w| w.file == percent_decode(name))
            {
                Some(w) => content_reply(w, req, &s),
                None => Reply::status(404),
            };
        }
        let Some(sha) = path.strip_prefix("/lfs/") else {
            return Reply::status(404);
        };
        if !req.path.contains("sig=") {
            return Reply::status(403);
        }
        return match s.files.iter().find(|f| f.lfs && f.etag() == sha) {
            Some(f) => content_reply(f, req, &s),
            None => Reply::status(404),
        };
    }
    let segments: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(percent_decode)
        .collect();
    if segments.len() > 5 && segments[0] == "api" && segments[1] == "resolve-cache" {
        // /api/resolve-cache/models/{org}/{name}/{commit}/{file}: where the
        // live hub sends git files.
        let repo = format!("{}/{}", segments[3], segments[4]);
        let file = segments[6..].join("/");
        return match s
            .files
            .iter()
            .find(|f| !f.lfs && f.repo == repo && f.file == file && segments[5] == commit_of(&repo))
        {
            Some(f) => content_reply(f, req, &s)
                .header("X-Repo-Commit", commit_of(&repo))
                .header("ETag", format!("\"{}\"", f.etag())),
            None => Reply::status(404),
        };
    }
    let (api, rest) = match segments.first().map(String::as_str) {
        Some("api") if segments.get(1).map(String::as_str) == Some("models") => {
            (true, &segments[2..])
        }
        _ => (false, &segments[..]),
    };
    if rest.len() < 4 {
        return Reply::status(404);
    }
    let repo = format!("{}/{}", rest[0], rest[1]);
    let known = s.files.iter().any(|f| f.repo == repo);
    if !known {
        return Reply::error(if token.is_some() { 404 } else { 401 }, "RepoNotFound");
    }
    if let Some(needed) = s.gated.get(&repo) {
        match &token {
            None => return Reply::error(401, "GatedRepo"),
            Some(t) if t != needed => return Reply::error(403, "GatedRepo"),
            _ => {}
        }
    }
    let commit = commit_of(&repo);
    let kind = &rest[2];
    let revision = &rest[3];
    if (api && kind != "revision") || (!api && kind != "resolve") {
        return Reply::status(404);
    }
    if revision != "main" && *revision != commit {
        return Reply::error(404, "RevisionNotFound");
    }
    if api {
        let siblings: Vec<String> = s
            .files
            .iter()
            .filter(|f| f.repo == repo)
            .map(|f| format!("{{\"rfilename\":\"{}\"}}", f.file))
            .collect();
        let body = format!(
            "{{\"id\":\"{repo}\",\"sha\":\"{commit}\",\"siblings\":[{}]}}",
            siblings.join(",")
        );
        let mut r = Reply::status(200).header("Content-Type", "application/json");
        r.body = body.into_bytes();
        return r;
    }
    let file = rest[4..].join("/");
    let Some(f) = s.files.iter().find(|f| f.repo == repo && f.file == file) else {
        return Reply::error(404, "EntryNotFound").header("X-Repo-Commit", commit);
    };
    if f.lfs {
        Reply::status(302)
            .header("Location", format!("{cdn_url}/lfs/{}?sig=mock", f.etag()))
            .header("X-Repo-Commit", commit)
            .header("X-Linked-Etag", format!("\"{}\"", f.etag()))
            .header("X-Linked-Size", f.content.len().to_string())
            .header("ETag", format!("\"{}\"", git_sha1_hex(b"pointer")))
    } else {
        let cached = format!(
            "/api/resolve-cache/models/{repo}/{commit}/{}?etag=%22{}%22",
            f.file,
            f.etag()
        );
        Reply::status(307)
            .header("Location", cached)
            .header("X-Repo-Commit", commit)
            .header("X-Linked-Etag", format!("\"{}\"", f.etag()))
    }
}

/// `GET /pypi/{project}/{version}/json`, shaped as PyPI's JSON API.
fn pypi_route(path: &str, s: &State, cdn_url: &str) -> Reply {
    let parts: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(percent_decode)
        .collect();
    let [pypi, project, version, json] = parts.as_slice() else {
        return Reply::status(404);
    };
    let found = s
        .packages
        .iter()
        .find(|p| p.project == *project && p.version == *version);
    let (Some(package), "pypi", "json") = (found, pypi.as_str(), json.as_str()) else {
        let mut r = Reply::status(404).header("Content-Type", "application/json");
        r.body = b"{\"message\": \"Not Found\"}".to_vec();
        return r;
    };
    let sdist = format!(
        "{{\"filename\":\"{project}-{version}.tar.gz\",\"packagetype\":\"sdist\",\
         \"url\":\"{cdn_url}/packages/{project}-{version}.tar.gz\",\
         \"digests\":{{\"sha256\":\"{}\"}},\"size\":3}}",
        sha256_hex(b"tar")
    );
    let mut urls = vec![sdist];
    if let Some(w) = &package.wheel {
        urls.push(format!(
            "{{\"filename\":\"{}\",\"packagetype\":\"bdist_wheel\",\
             \"url\":\"{cdn_url}/packages/{}\",\
             \"digests\":{{\"md5\":\"0\",\"sha256\":\"{}\"}},\"size\":{},\"yanked\":false}}",
            w.file,
            w.file,
            w.etag(),
            w.content.len()
        ));
    }
    let mut r = Reply::status(200).header("Content-Type", "application/json");
    r.body = format!(
        "{{\"info\":{{\"name\":\"{project}\",\"version\":\"{version}\"}},\"urls\":[{}]}}",
        urls.join(",")
    )
    .into_bytes();
    r
}

/// A wheel (a zip archive) holding `members`, deflated.
pub fn wheel(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut out);
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, data) in members {
            zip.start_file(*name, options).unwrap();
            zip.write_all(data).unwrap();
        }
        zip.finish().unwrap();
    }
    out.into_inner()
}

fn content_reply(f: &MockFile, req: &Request, s: &State) -> Reply {
    let len = f.content.len();
    let mut content = f.content.clone();
    if s.corrupt.contains(&f.file) && len > 0 {
        content[len / 2] ^= 0xff;
    }
    let start = req
        .header("range")
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok());
    let mut reply = match start {
        Some(n) if n >= len => {
            return Reply::status(416).header("Content-Range", format!("bytes */{len}"))
        }
        Some(n) => {
            let mut r =
                Reply::status(206).header("Content-Range", format!("bytes {n}-{}/{len}", len - 1));
            r.body = content[n..].to_vec();
            r
        }
        None => {
            let mut r = Reply::status(200);
            r.body = content;
            r
        }
    };
    reply.file = Some(f.file.clone());
    reply.header("Accept-Ranges", "bytes")
}

fn send(
    mut conn: TcpStream,
    method: &str,
    mut reply: Reply,
    state: &Mutex<State>,
) -> std::io::Result<()> {
    let reason = match reply.status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        307 => "Temporary Redirect",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        _ => "Status",
    };
    let length = reply.length.unwrap_or(reply.body.len());
    let mut head = format!("HTTP/1.1 {} {reason}\r\n", reply.status);
    for (k, v) in &reply.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {length}\r\nConnection: close\r\n\r\n"
    ));
    conn.write_all(head.as_bytes())?;
    if method == "HEAD" || reply.body.is_empty() {
        return conn.flush();
    }
    let cut = {
        let mut s = state.lock().unwrap();
        reply.file.as_ref().and_then(|f| s.cut_next.remove(f))
    };
    if let Some(n) = cut {
        reply.body.truncate(n);
    }
    let mut sent = 0u64;
    for chunk in reply.body.chunks(16 * 1024) {
        // Read per chunk: a test may speed up a transfer under way.
        let throttle = state.lock().unwrap().throttle;
        if let Some(t) = throttle {
            std::thread::sleep(t);
        }
        if conn.write_all(chunk).is_err() {
            break;
        }
        sent += chunk.len() as u64;
    }
    let _ = conn.flush();
    if let Some(file) = reply.file {
        state
            .lock()
            .unwrap()
            .served
            .entry(file)
            .or_default()
            .push(sent);
    }
    if cut.is_some() {
        let _ = conn.shutdown(std::net::Shutdown::Both);
    }
    Ok(())
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
